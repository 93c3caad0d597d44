"""Sandboxes that outlive the command that started them (``isolate run -d``).

``lifecycle`` starts, finds, stops and removes them; ``monitor`` is the small daemon that
holds them and records their exits; ``enter`` runs a command inside one (``isolate exec``);
``stats`` reads their cgroups; ``network`` joins two of them; ``gc`` removes what a killed
sandbox left behind.  Their records and locks live in ``isolate._state``.
"""
