"""A live local view of a workspace in the browser (``pip install 'contexta-async[view]'``).

```python
from contexta_async.view import serve

serve(".contexta", host="127.0.0.1", port=8000)   # blocks; Ctrl-C stops it
```

A port in use (or a host that does not resolve) raises ``ListenError`` before anything is
served; ``serve(..., port=0, ready=print)`` prints the address once the server listens.

``/`` lists the runs with their status and counts, ``/runs/RUN`` shows one run,
``/compare/LEFT/RIGHT`` compares two; the pages update while runs are being captured. The
server reads only what was appended to the workspace since its last read.
"""

from ._serve import ListenError, MissingExtraError, create_app, serve

__all__ = ["ListenError", "MissingExtraError", "create_app", "serve"]
