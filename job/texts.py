"""A column of texts held in one Arrow array, not as Python objects.

A tuple of Python strings costs about 50 bytes of object header and 8 of pointer per row on top of
the characters: at 10 million rows that is gigabytes before a token exists. `Texts` keeps the
characters and one offset per row (large_string: no 2 GiB ceiling) and behaves as a read-only
sequence of str, so the rest of the job indexes, slices, iterates and compares it like a tuple.
Validation that must see every row (empty or whitespace-only texts, NUL bytes) runs as Arrow
compute kernels here, at C speed and without per-row objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

# Python's str.isspace() set (bidi classes WS, B, S and category Zs), spelled for RE2, so that a
# text Arrow calls whitespace-only is exactly one Python's `not text.strip()` calls empty
# (tests/test_texts.py checks every code point).
_SPACE = (r"\t-\r\x{1c}-\x{20}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}"
          r"\x{3000}")
BLANK = f"^[{_SPACE}]*$"
_ITER_CHUNK = 1 << 16


def _large(values):
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        # One array: Arrow's take on a chunked array joins the chunks first, a copy at every carve.
        # Cast each chunk before joining: string chunks together may pass 2 GiB of characters.
        chunks = [c.cast(pa.large_string()) for c in values.chunks] or [pa.array([], pa.large_string())]
        return pa.concat_arrays(chunks) if len(chunks) > 1 else chunks[0]
    if isinstance(values, pa.Array):
        return values if values.type == pa.large_string() else values.cast(pa.large_string())
    return pa.array(values if isinstance(values, list) else list(values), pa.large_string())


def release_unused() -> None:
    """Hand Arrow's freed memory back to the system. Its pool (mimalloc) keeps freed pages for
    reuse, so the transient peak of reading (the CSV parser's buffers, the carve's copies) would
    otherwise stay resident under everything that follows: tokenization, the model, training."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


class Texts(Sequence):
    """Read-only sequence of str over one Arrow large_string array (`.arrow`)."""

    __slots__ = ("arrow",)

    def __init__(self, values=()):
        self.arrow = values.arrow if isinstance(values, Texts) else _large(values)

    @classmethod
    def concat(cls, parts: list["Texts"]) -> "Texts":
        import pyarrow as pa

        if len(parts) == 1:
            return parts[0]
        return cls(pa.concat_arrays([p.arrow for p in parts]) if parts else ())

    def __len__(self) -> int:
        return len(self.arrow)

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            return self.take(np.arange(start, stop, step)) if step != 1 else Texts(self.arrow[start:stop])
        return self.arrow[i].as_py()

    def __iter__(self) -> Iterator[str]:
        for begin in range(0, len(self), _ITER_CHUNK):
            yield from self.arrow[begin:begin + _ITER_CHUNK].to_pylist()

    def __eq__(self, other) -> bool:
        if isinstance(other, Texts):
            return self.arrow.equals(other.arrow)
        if isinstance(other, (tuple, list)):
            return len(other) == len(self) and list(self) == list(other)
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        shown = ", ".join(repr(t) for t in self[:3])
        return f"Texts([{shown}{', …' if len(self) > 3 else ''}], {len(self)} rows)"

    def take(self, idx) -> "Texts":
        import pyarrow as pa

        return Texts(self.arrow.take(pa.array(np.asarray(idx, dtype=np.int64))))

    def tolist(self) -> list[str]:
        return self.arrow.to_pylist()

    def first(self, mask) -> int | None:
        """Index of the first row where the boolean Arrow array `mask` is true, else None."""
        import pyarrow.compute as pc

        i = pc.index(mask, True).as_py() if len(mask) else None
        return None if i is None or i < 0 else int(i)

    def first_null(self) -> int | None:
        import pyarrow.compute as pc

        return self.first(pc.is_null(self.arrow)) if self.arrow.null_count else None

    def first_blank(self) -> int | None:
        """First row that is empty or whitespace-only (as Python's str.strip() sees it)."""
        import pyarrow.compute as pc

        return self.first(pc.match_substring_regex(self.arrow, BLANK))

    def first_nul(self) -> tuple[int, int] | None:
        """(row, character index) of the first NUL byte, else None."""
        import pyarrow.compute as pc

        i = self.first(pc.match_substring(self.arrow, "\x00"))
        return None if i is None else (i, self[i].index("\x00"))
