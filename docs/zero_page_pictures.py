"""The pictures of the zero-page decision, drawn from what the library really does.

Run by the documentation build (``conf.py``'s ``zero-page-picture`` directive),
or by hand: ``python docs/zero_page_pictures.py OUTDIR`` writes
``source.svg`` and ``destination.svg``. Nothing is drawn by hand: each
picture runs the library on a small RAM block and draws what came out.

- source: a batch of 16 queued pages split by
  :func:`~multifd_zero.send_zero_page_detect` (QEMU's
  ``multifd_send_zero_page_detect``): the offsets in queue order, then in the
  order the packet carries them, normal pages first, and what each costs on the
  wire;
- destination: a packet's zero pages applied by
  :func:`~multifd_zero.recv_zero_page_process` (QEMU's
  ``multifd_recv_zero_page_process``) to a block whose receivedmap has some
  pages already, in precopy and with postcopy-ram: which pages are written with
  zeros, which are left untouched, and the receivedmap afterwards.

Plain SVG written by this script: no plotting library, no network.
"""

from __future__ import annotations

import sys
from html import escape
from pathlib import Path

import numpy as np

from multifd_zero import (
    MigrationOptions,
    MigrationStats,
    MultiFDPages,
    RAMBlock,
    recv_zero_page_process,
    send_zero_page_detect,
)

PS = 4096
N = 16
CELL = 34
LEFT = 170
ZERO_FILL, DATA_FILL = "#ffffff", "#4878b8"
WRITE_FILL, SKIP_FILL, SET_FILL = "#d9534f", "#e8e8e8", "#5cb85c"
FONT = 'font-family="DejaVu Sans, Verdana, sans-serif"'


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>"
        f'<rect width="{width}" height="{height}" fill="#fcfcfc"/>' + "".join(body) + "</svg>"
    )


def _text(x: float, y: float, text: str, size: int = 12, anchor: str = "start",
          weight: str = "normal", fill: str = "#222") -> str:  # fmt: skip
    return (
        f'<text x="{x}" y="{y}" font-size="{size}" text-anchor="{anchor}" '
        f'font-weight="{weight}" fill="{fill}" {FONT}>{escape(text)}</text>'
    )


def _cell(x: float, y: float, fill: str, label: str, light: bool) -> str:
    color = "#fff" if not light else "#222"
    return (
        f'<rect x="{x}" y="{y}" width="{CELL - 4}" height="{CELL - 4}" rx="3" '
        f'fill="{fill}" stroke="#555" stroke-width="1"/>'
        + _text(x + (CELL - 4) / 2, y + CELL / 2 + 1, label, 11, "middle", fill=color)
    )


def _legend(x: float, y: float, items: list[tuple[str, str]]) -> list[str]:
    out = []
    for fill, label in items:
        out.append(f'<rect x="{x}" y="{y - 11}" width="14" height="14" rx="2" fill="{fill}" '
                   'stroke="#555"/>')  # fmt: skip
        out.append(_text(x + 20, y, label, 12))
        x += 30 + 7.2 * len(label)
    return out


def _guest(seed: int = 7) -> tuple[bytearray, np.ndarray]:
    """16 pages, about half zero, at fixed random places; the content kinds."""
    rng = np.random.default_rng(seed)
    zero = rng.random(N) < 0.5
    ram = bytearray(N * PS)
    for k in np.flatnonzero(~zero):
        ram[k * PS + int(rng.integers(PS))] = int(rng.integers(1, 256))
    return ram, zero


def source_svg() -> str:
    """The sender's split of one batch."""
    ram, zero = _guest()
    block = RAMBlock("pc.ram", bytes(ram), PS)
    queued = np.arange(N, dtype=np.uint64) * PS
    pages = MultiFDPages(block, queued)
    stats = MigrationStats()
    normal_num = send_zero_page_detect(pages, options=MigrationOptions(), stats=stats)
    order = (np.asarray(pages.offset) // PS).tolist()
    width, body = LEFT + N * CELL + 30, []
    body.append(_text(12, 24, "Source: a multifd channel splits its batch", 14, weight="bold"))
    body.append(_text(12, 42, "send_zero_page_detect(), QEMU's multifd_send_zero_page_detect()",
                      11, fill="#666"))  # fmt: skip
    y1, y2 = 62, 142
    body.append(_text(12, y1 + 20, "queued batch", 12, weight="bold"))
    body.append(_text(12, y1 + 36, "page index, queue order", 11, fill="#666"))
    for i in range(N):
        body.append(_cell(LEFT + i * CELL, y1, ZERO_FILL if zero[i] else DATA_FILL, str(i),
                          bool(zero[i])))  # fmt: skip
    body.append(_text(12, y2 + 20, "packet order", 12, weight="bold"))
    body.append(_text(12, y2 + 36, "after the two-pointer pass", 11, fill="#666"))
    for i, k in enumerate(order):
        body.append(_cell(LEFT + i * CELL, y2, ZERO_FILL if zero[k] else DATA_FILL, str(k),
                          bool(zero[k])))  # fmt: skip
    for i, k in enumerate(order):  # where each page went
        x_from = LEFT + k * CELL + (CELL - 4) / 2
        x_to = LEFT + i * CELL + (CELL - 4) / 2
        body.append(f'<line x1="{x_from}" y1="{y1 + CELL - 4}" x2="{x_to}" y2="{y2}" '
                    'stroke="#999" stroke-width="1"/>')  # fmt: skip
    split = LEFT + normal_num * CELL - 2
    body.append(f'<line x1="{split}" y1="{y2 - 6}" x2="{split}" y2="{y2 + CELL + 4}" '
                'stroke="#d9534f" stroke-width="2.5"/>')  # fmt: skip
    y3 = y2 + CELL + 24
    body.append(_text(LEFT + normal_num * CELL / 2, y3, f"normal_num = {normal_num}: "
                      f"offset + {PS} bytes each", 11, "middle"))  # fmt: skip
    zeros = N - normal_num
    body.append(_text(LEFT + (normal_num + zeros / 2) * CELL, y3,
                      f"{zeros} zero pages: 8-byte offset only", 11, "middle"))  # fmt: skip
    sent = normal_num * PS
    body.append(_text(12, y3 + 28, f"stats: normal {stats.normal_pages}, duplicate (zero) "
                      f"{stats.zero_pages}; page data on the wire {sent} of {N * PS} bytes",
                      12))  # fmt: skip
    body += _legend(12, y3 + 56, [(DATA_FILL, "page with data"), (ZERO_FILL, "all-zero page"),
                                  ("#d9534f", "normal | zero split")])  # fmt: skip
    return _svg(width, y3 + 72, body, "multifd zero-page detection on the source")


def destination_svg() -> str:
    """The receiver's rule for one packet's zero pages, precopy and postcopy."""
    _, zero = _guest()
    zero_pages = np.flatnonzero(zero)
    received_before = np.zeros(N, dtype=bool)
    received_before[::3] = True  # pages that came in an earlier round
    rows = {}
    bits_after = None
    for postcopy in (False, True):
        # Sentinel memory, so that a write of zeros shows; the receivedmap as
        # an earlier round left it.
        memory = bytearray(b"\xa5" * (N * PS))
        block = RAMBlock("pc.ram", memory, PS)
        for k in np.flatnonzero(received_before):
            block.receivedmap.set(int(k) * PS)
        recv_zero_page_process(block, zero_pages * PS,
                               options=MigrationOptions(postcopy_ram=postcopy))  # fmt: skip
        written = np.array([memory[k * PS] == 0 for k in range(N)])
        rows[postcopy] = written
        bits = np.array([block.receivedmap.test(k * PS) for k in range(N)])
        assert bits_after is None or (bits == bits_after).all()  # "both modes alike"
        bits_after = bits
    assert bits_after is not None
    width, body = LEFT + N * CELL + 30, []
    body.append(_text(12, 24, "Destination: a packet's zero pages applied", 14, weight="bold"))
    body.append(_text(12, 42, "recv_zero_page_process(), QEMU's "
                      "multifd_recv_zero_page_process()", 11, fill="#666"))  # fmt: skip
    y = 52
    body.append(_text(12, y + 20, "page", 12, weight="bold"))
    for i in range(N):
        body.append(_text(LEFT + i * CELL + (CELL - 4) / 2, y + 20, str(i), 11, "middle"))
    y += 30
    label_rows = [
        ("in the packet", "its zero-page offsets", [
            (ZERO_FILL if zero[i] else "#f4f4f4", "Z" if zero[i] else "", True)
            for i in range(N)]),
        ("receivedmap before", "from earlier rounds", [
            (SET_FILL if received_before[i] else SKIP_FILL, "1" if received_before[i] else "0",
             not received_before[i]) for i in range(N)]),
        ("precopy", "a new page is left alone", [
            _action(zero[i], rows[False][i]) for i in range(N)]),
        ("postcopy-ram", "every zero page written", [
            _action(zero[i], rows[True][i]) for i in range(N)]),
        ("receivedmap after", "both modes alike", [
            (SET_FILL if bits_after[i] else SKIP_FILL, "1" if bits_after[i] else "0",
             not bits_after[i]) for i in range(N)]),
    ]  # fmt: skip
    for title, note, cells in label_rows:
        body.append(_text(12, y + 16, title, 12, weight="bold"))
        body.append(_text(12, y + 30, note, 10, fill="#666"))
        for i, (fill, label, light) in enumerate(cells):
            body.append(_cell(LEFT + i * CELL, y, fill, label, light))
        y += CELL + 12
    skipped = int(np.count_nonzero(zero & ~rows[False]))
    body.append(_text(12, y + 10, f"precopy: {int(np.count_nonzero(rows[False]))} of "
                      f"{len(zero_pages)} zero pages written (those received before), "
                      f"{skipped} neither read nor written; postcopy-ram: "
                      f"{int(np.count_nonzero(rows[True]))} written", 12))  # fmt: skip
    body += _legend(12, y + 38, [(WRITE_FILL, "written with zeros"),
                                 (SKIP_FILL, "not touched"), (SET_FILL, "bit set")])  # fmt: skip
    return _svg(width, y + 54, body, "multifd zero pages on the destination")


def _action(is_zero: bool, written: bool) -> tuple[str, str, bool]:
    if not is_zero:
        return "#f4f4f4", "", True
    return (WRITE_FILL, "W", False) if written else (SKIP_FILL, "-", True)


PICTURES = {"source": source_svg, "destination": destination_svg}


def main(outdir: str) -> int:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    for name, draw in PICTURES.items():
        (out / f"{name}.svg").write_text(draw(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
