"""Does a Streamlit Components v2 map (no iframe) paint sooner than the iframe (v1) component the big
map uses today? A tiny standalone app, the same WebGL drawing either way, measured in Chromium.

    python bench/components_v2.py                 # 17,736 and 1,000,000 points, 3 fresh pages each
    python bench/components_v2.py --sizes 17736 --repeats 5

Each case: `streamlit run` of a generated one-element app (the points as a media file, as the big map
serves its columns), a fresh Chromium page per repeat; "painted" = ms from the page's navigation to the
first WebGL frame holding the points (read back with readPixels), "element" = when the component's
code first ran. The ratio v2 / iframe is the figure judged (same run, same load).
Writes bench/results/components-v2.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DRAW_JS = r"""
async function drawMap(canvas, url, n, mark) {
  mark("element");
  const buf = await (await fetch(url, { headers: { Range: "bytes=0-" } })).arrayBuffer();
  mark("fetched");
  canvas.width = 900; canvas.height = 560;
  const gl = canvas.getContext("webgl2");
  const vs = gl.createShader(gl.VERTEX_SHADER), fs = gl.createShader(gl.FRAGMENT_SHADER);
  gl.shaderSource(vs, `#version 300 es
    layout(location=0) in vec2 a; void main() { gl_Position = vec4(a * 0.02, 0.0, 1.0); gl_PointSize = 3.0; }`);
  gl.shaderSource(fs, `#version 300 es
    precision mediump float; out vec4 o; void main() { o = vec4(0.1, 0.3, 0.8, 0.8); }`);
  gl.compileShader(vs); gl.compileShader(fs);
  const p = gl.createProgram(); gl.attachShader(p, vs); gl.attachShader(p, fs); gl.linkProgram(p); gl.useProgram(p);
  const b = gl.createBuffer(); gl.bindBuffer(gl.ARRAY_BUFFER, b);
  gl.bufferData(gl.ARRAY_BUFFER, new Float32Array(buf, 0, 2 * n), gl.STATIC_DRAW);
  gl.enableVertexAttribArray(0); gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
  gl.clearColor(1, 1, 1, 1); gl.clear(gl.COLOR_BUFFER_BIT); gl.drawArrays(gl.POINTS, 0, n);
  gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));
  mark("painted");
}
"""

APP = r'''
import numpy as np, streamlit as st
from streamlit import runtime
N, MODE = {n}, "{mode}"
st.title("map")

@st.cache_resource
def points():
    rng = np.random.default_rng(0)
    return (rng.normal(0, 15, (N, 2)).astype(np.float32)).tobytes()

url = runtime.get_instance().media_file_mgr.add(points(), "application/octet-stream", "pts.bin")
DRAW = {draw!r}
if MODE == "v2":
    comp = st.components.v2.component("v2map", html="<canvas id='c' style='width:900px;height:560px'></canvas>",
        js=DRAW + """
export default function(component) {{
  const {{ data, parentElement }} = component;
  const mark = (k) => {{ window.__marks = window.__marks || {{}}; if (!(k in window.__marks)) window.__marks[k] = Date.now(); }};
  if (window.__started) return; window.__started = true;
  drawMap(parentElement.querySelector("canvas"), data.url, data.n, mark);
}}""")
    comp(data={{"url": url, "n": N}}, key="m")
else:
    import streamlit.components.v1 as components
    c = components.declare_component("v1map", path="{frontend}")
    c(url=url, n=N, key="m", default=None)
st.write("after the map")
'''

INDEX = """<!doctype html><html><body style="margin:0"><canvas id="c" style="width:900px;height:560px"></canvas><script>
%s
const mark = (k) => { const t = window.top; t.__marks = t.__marks || {}; if (!(k in t.__marks)) t.__marks[k] = Date.now(); };
let started = false;
window.addEventListener("message", (e) => {
  if (!e.data || e.data.type !== "streamlit:render" || started) return;
  started = true;
  window.parent.postMessage({ isStreamlitMessage: true, type: "streamlit:setFrameHeight", height: 570 }, "*");
  const base = new URLSearchParams(location.search).get("streamlitUrl") || location.origin + "/";
  drawMap(document.getElementById("c"), new URL(e.data.args.url.replace(/^\\//, ""), base).href, e.data.args.n, mark);
});
window.parent.postMessage({ isStreamlitMessage: true, type: "streamlit:componentReady", apiVersion: 1 }, "*");
</script></body></html>"""


def measure(app: Path, repeats: int) -> dict:
    import subprocess
    import time
    import urllib.request

    from tests.browser_fixtures import chromium, free_port, stop_server

    port = free_port()
    streamlit = Path(sys.executable).with_name("streamlit")
    proc = subprocess.Popen([str(streamlit), "run", str(app), "--server.port", str(port), "--server.headless", "true",
                             "--server.address", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=app.parent)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=1)
                break
            except Exception:
                time.sleep(0.2)
        out = {"element": [], "fetched": [], "painted": []}
        with chromium() as b:
            for r in range(repeats + 1):  # the first page warms the server's caches: not counted
                page = b.new_page(viewport={"width": 1200, "height": 900})
                page.goto(url)
                page.wait_for_function("() => window.__marks && window.__marks.painted", timeout=120000)
                m = page.evaluate("() => Object.fromEntries(Object.entries(window.__marks).map(([k, v]) => [k, v - performance.timeOrigin]))")
                page.close()
                if r:
                    for k in out:
                        out[k].append(m[k] / 1000)
        return {k: round(statistics.median(v), 3) for k, v in out.items()} | {"painted_all": [round(v, 3) for v in out["painted"]]}
    finally:
        stop_server(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="17736,1000000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "components-v2.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        front = Path(tmp) / "frontend"
        front.mkdir()
        (front / "index.html").write_text(INDEX % DRAW_JS)
        for n in map(int, args.sizes.split(",")):
            row = {"points": n}
            for mode in ("iframe", "v2"):
                app = Path(tmp) / f"app_{mode}_{n}.py"
                app.write_text(APP.format(n=n, mode=mode, draw=DRAW_JS, frontend=str(front)))
                row[mode] = measure(app, args.repeats) | {"load": round(os.getloadavg()[0], 2)}
            row["v2_over_iframe_painted"] = round(row["v2"]["painted"] / row["iframe"]["painted"], 3)
            print(json.dumps(row), flush=True)
            rows.append(row)
    Path(args.out).write_text(json.dumps({"machine": f"{os.cpu_count()} cores", "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
