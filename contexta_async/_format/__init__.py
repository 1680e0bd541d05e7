"""The written format, in one place: the ref grammar (``refs``), the line Structs written and
read (``lines``) and the layout of the ``record.index`` and ``context.index`` frames
(``index``).

Capture, the local sink and the readers all import from here, so a change of the format is
one diff in this package (plus the code that must follow it).
"""

__all__: list[str] = []
