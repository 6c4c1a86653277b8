# What a reader has done before a serving page: the quickstart's first step without the
# certificates. Sourced by a page's hidden `<!-- test-only` block (tests/test_docs_examples.py).
# Usage: . "$DOCS_SETUP/encrypted-model.sh" [NAME]   (default half_plus_two)
doc_model=${1:-half_plus_two}
sealserve models make "$doc_model" "plain/$doc_model/1" > /dev/null
sealserve keygen -w "keys/$doc_model.key" > /dev/null
sealserve encrypt -w "keys/$doc_model.key" -i "plain/$doc_model/1" -o "models/$doc_model/1" > /dev/null
