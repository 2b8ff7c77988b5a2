"""The web dashboard: ``trainkit dashboard [--storage PATH] [--address ADDR]``.

A page listing every run and sweep under a storage folder with its status, a page per run
with its metric curves, a page per sweep with its trials and a plot, and with ``--address`` a
page with the cluster's nodes, resources, actors and placement groups, refreshed live. It
reads only the ledgers (``ledger.jsonl``) and result files (``result.json``) in the storage,
and asks a cluster through the public runtime API. Standard library only (``http.server``),
charts drawn as SVG on the server: nothing to install, nothing fetched by the browser.

Parts: ``_model`` (ledger and results -> page data, pure), ``_svg`` and ``_pages`` (markup,
pure), ``_scan`` (reading the storage), ``_cluster`` (asking the cluster), ``_server`` (HTTP),
``_main`` (the command). It has no Python API of its own: the command is the interface.
"""

__all__: list[str] = []
