"""Command-line tools over the library: the stage table (:mod:`.stages`, ``python -m mgd.inspect``) and the
matching pictures (:mod:`.plot`, ``python -m mgd.plot``). ``import mgd`` imports neither (matplotlib is loaded
only by the pictures)."""
