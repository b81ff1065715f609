"""Everything ktstr-ci takes from kernel.org (or a mirror of it), in one place.

- ``versions``: the version grammar (exact, prefix, range) and its order; pure.
- ``urls``: where releases.json, tarballs and checksum files come from.
- ``http``: urllib, its errors and timeout, content checks, a hashing reader
  with progress: the one HTTP client of the worker command.
- ``releases``: releases.json (fetch, parse, resolve latest / mainline /
  prefix / range); the matrix step fetches it over treq and reads the answer here.
- ``tarballs``: a tarball streamed straight into a source tree.
- ``download_cache``: the per-host cache of tarballs the nightly matrix shares.
"""
