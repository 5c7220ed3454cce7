"""The log shipper's parts: the disk spool and the transports (Logstash http, Elasticsearch
``_bulk``, TCP lines). ``pyobs.shipper`` holds the handler and the queue that ties them."""
