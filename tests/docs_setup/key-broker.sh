# What a reader has done before the key broker's pages: the quickstart's steps 1 to 3 (the
# encrypted model and its certificates, a simulated TEE, a running key broker holding the
# model's key under a policy pinning the quickstart's server). Sourced by a page's hidden
# `<!-- test-only` block, which names the ports so the suite can replace them:
#   . "$DOCS_SETUP/key-broker.sh" 8443 8500 8501   (KBS, then the server's gRPC and REST)
# Leaves ADMIN and SERVE set as the quickstart does, and DOC_KBS_PID; the page (or the suite,
# at the end) stops the broker.
. "$DOCS_SETUP/encrypted-model.sh" half_plus_two
sealserve certs twoway localhost client.local -o ssl_configure --san 127.0.0.1 \
    --encrypt-ssl-cfg keys/half_plus_two.key > /dev/null
sealserve sim init sim > /dev/null
sealserve kbs init kbs-keys > /dev/null
sealserve certs oneway localhost -o kbs-tls --san 127.0.0.1 > /dev/null
sealserve kbs serve --db kbs.db --master-key kbs-keys/master.key \
    --signing-key kbs-keys/signing-key.pem --admin-token-file kbs-keys/admin.token \
    --tls-cert kbs-tls/server/cert.pem --tls-key kbs-tls/server/key.pem \
    --host 127.0.0.1 --port "$1" --insecure-trust-sim-root sim > kbs.log 2>&1 &
DOC_KBS_PID=$!
until grep -q "KBS listening" kbs.log; do
    kill -0 $DOC_KBS_PID 2> /dev/null || { cat kbs.log >&2; exit 1; }
    sleep 0.2
done
ADMIN="--url https://127.0.0.1:$1 --ca kbs-tls/server/cert.pem --admin-token-file kbs-keys/admin.token"
sealserve kbs secret put sealserve/model-key/half_plus_two --file keys/half_plus_two.key \
    $ADMIN > /dev/null
SERVE="--model_name=half_plus_two --model_base_path=models/half_plus_two
    --port=$2 --rest_api_port=$3 --bind_address=127.0.0.1
    --ssl_config_file=ssl_configure/ssl.cfg --ssl_config_key=half_plus_two
    --key_broker=https://127.0.0.1:$1 --key_broker_ca=kbs-tls/server/cert.pem
    --attestation=sim --sim_dir=sim"
printf 'tee = ["sim"]\n[[sim]]\nmr_enclave = ["%s"]\nmr_signer = "any"\nisv_prod_id = [0]\n' \
    "$(sealserve measure $SERVE)" > policy.toml
sealserve kbs policy set sealserve/model-key/half_plus_two policy.toml $ADMIN > /dev/null
