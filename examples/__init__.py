"""Orchestration of whole deployments on one machine, outside the installed package:
`demo.py` (`make demo`) and `cluster.py` (`make cluster-demo`). They drive the `sealserve`
command and the servers it starts; tests/test_demo.py and tests/test_cluster.py run them."""
