"""Screenshot of the executed tour notebook for the docs (``docs/images/notebook_tour.png``).

Executes ``examples/pfn_tour.ipynb`` headless (nbclient, widget state kept), renders a range of
its cells to HTML with nbconvert, and photographs the page with headless Chromium. The widgets
(sliders, count boxes, instance panels) are drawn from their saved state by the standalone
``@jupyter-widgets/html-manager`` bundle, which nbconvert normally loads from a CDN; give a
local copy instead (the npm registry has both packages):

    mkdir -p /tmp/widgets-js && cd /tmp/widgets-js && \\
        npm pack @jupyter-widgets/html-manager@1 requirejs@2 && \\
        for f in *.tgz; do mkdir -p "${f%.tgz}" && tar xzf "$f" -C "${f%.tgz}"; done
    python scripts/notebook_screenshot.py --widgets-js /tmp/widgets-js

Needs the ``notebook`` extra (nbclient, nbconvert comes with jupyterlab) and a ``chromium``
binary (Debian: ``apt-get install chromium``). The saved PNG is trimmed of the empty page below
the last cell and reduced to 256 colours.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "pfn_tour.ipynb"


def _find(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(f"**/{pattern}"))
    if not found:
        raise SystemExit(f"notebook_screenshot: error: no {pattern} under {root} (see --help)")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widgets-js", required=True, type=Path,
                    help="folder holding the unpacked @jupyter-widgets/html-manager and requirejs")
    ap.add_argument("--first", type=int, default=14,
                    help="index of the first cell shown (14: '6. Turn the knobs')")
    ap.add_argument("--last", type=int, default=19,
                    help="index of the last cell shown (19: the ground-truth comparison)")
    ap.add_argument("--width", type=int, default=1100, help="page width in pixels")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "notebook_tour.png")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = ap.parse_args(argv)

    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter
    from PIL import Image, ImageChops

    embed = _find(args.widgets_js, "*html-manager*/**/dist/embed-amd.js")
    require = _find(args.widgets_js, "requirejs*/**/require.js")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    print(f"executed {NOTEBOOK.name} in {time.perf_counter() - t0:.1f} s")
    if not 0 <= args.first <= args.last < len(nb.cells):
        raise SystemExit(f"notebook_screenshot: error: --first/--last must be cell indices "
                         f"0 <= first <= last < {len(nb.cells)}")
    nb.cells = nb.cells[args.first:args.last + 1]
    exporter = HTMLExporter(require_js_url=require.as_uri(), widget_renderer_url=embed.as_uri())
    html, _ = exporter.from_notebook_node(nb)
    with tempfile.TemporaryDirectory() as tmp:
        page, shot = Path(tmp) / "tour.html", Path(tmp) / "tour.png"
        page.write_text(html)
        subprocess.run([args.chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", "--allow-file-access-from-files",
                        "--virtual-time-budget=15000", f"--window-size={args.width},6000",
                        f"--screenshot={shot}", page.as_uri()],
                       check=True, capture_output=True, timeout=300)
        image = Image.open(shot).convert("RGB")
    blank = Image.new("RGB", image.size, (255, 255, 255))
    box = ImageChops.difference(image, blank).getbbox()
    if box is None:
        raise SystemExit("notebook_screenshot: error: the page came out blank")
    image = image.crop((0, 0, image.width, min(image.height, box[3] + 16)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        args.out, optimize=True)
    print(f"wrote {args.out} ({image.width} x {image.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
