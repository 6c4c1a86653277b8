# A running server for the requester's pages: half_plus_two encrypted, mutual TLS on both
# ports (certificates in ssl_configure/, as the quickstart makes them), loopback only.
# Sourced by a page's hidden `<!-- test-only` block, which names the ports so the suite can
# replace them: . "$DOCS_SETUP/mtls-server.sh" 8500 8501
# Leaves DOC_SERVER_PID set; the page (or the suite, at the end) stops it.
. "$DOCS_SETUP/encrypted-model.sh" half_plus_two
sealserve certs twoway localhost client.local -o ssl_configure --san 127.0.0.1 \
    --encrypt-ssl-cfg keys/half_plus_two.key > /dev/null
sealserve serve --model_name=half_plus_two --model_base_path=models/half_plus_two \
    --port="$1" --rest_api_port="$2" --bind_address=127.0.0.1 \
    --ssl_config_file=ssl_configure/ssl.cfg --model_key=half_plus_two=keys/half_plus_two.key \
    > doc-server.log 2>&1 &
DOC_SERVER_PID=$!
until grep -q "serving half_plus_two" doc-server.log; do
    kill -0 $DOC_SERVER_PID 2> /dev/null || { cat doc-server.log >&2; exit 1; }
    sleep 0.2
done
