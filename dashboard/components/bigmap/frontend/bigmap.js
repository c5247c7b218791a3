// The galaxy map for large runs: a Streamlit component (protocol v1, no build step).
//
// Why it is built this way (measured in headless Chromium with software WebGL):
// one full draw of 1M points costs ~3 s, so nothing a user does often may redraw
// every point. Points are drawn once per view into one texture per true class
// (a "layer"); class highlighting only re-composites those textures (grey or
// colour), pan/zoom moves the textures at once and redraws the points when the
// gesture ends, and hover, rings, stars and the selection outline live on a 2-D
// overlay canvas. The point columns come once per run as one binary file
// (x, y float32; true class, predicted class, confidence uint8) plus one uint8
// colour column; the Python side (dashboard/components/bigmap) serves them.
"use strict";

// ------------------------------------------------------------------ Streamlit protocol
function post(type, data) { window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type }, data), "*"); }
const setValue = (value) => post("streamlit:setComponentValue", { value, dataType: "json" });
const setHeight = (height) => post("streamlit:setFrameHeight", { height });
const APP_URL = new URLSearchParams(location.search).get("streamlitUrl") || location.origin + "/";

const GREY = [0xc9 / 255, 0xc9 / 255, 0xc9 / 255], GREY_ALPHA = 0.55;
const CHUNK = 250000;
// Up to this many galaxies (and nothing highlighted) the screen is drawn from the points, not composited
// from the class layers: with software WebGL, 17,736 points draw in ~20 ms where sampling ten
// full-screen layer textures takes ~100 ms; around 150k points the two cost the same.
const DIRECT_MAX = 100000;  // points drawn per animation frame, so the page stays responsive while drawing

const $ = (id) => document.getElementById(id);
const S = {
  args: null, n: 0, x: null, y: null, label: null, pred: null, conf: null, colour: null, order: null,
  urls: {}, fetches: {}, rings: {}, layers: [], view: null, home: null, front: null, job: [], mode: "box",
  hover: -1, hoverStar: -1, drag: null, shape: null, grid: null, dpr: Math.min(window.devicePixelRatio || 1, 2),
};
// What the benchmark and the browser test read (no effect on the page).
// marks: {phase: ms since this frame opened} of the first load (the benchmark's per-phase breakdown);
// trip: the same for the last event sent -> the server's answer -> drawn.
window.__bigmap = { fetchedBytes: 0, loads: performance.now(), paints: 0, lastRenderMs: null, composites: 0, highlight: "", loadedPoints: 0, ringsShown: 0,
                    events: 0, error: null, marks: { script: performance.now() }, trip: null };
const mark = (name, into = window.__bigmap.marks) => { if (into && !(name in into)) into[name] = performance.now(); };

// ------------------------------------------------------------------ WebGL
// Three stacked canvases: the points (WebGL), marks (rings, stars: redrawn when the view or
// the rings change) and the overlay (hover ring, box/lasso outline: redrawn as the pointer moves).
const glCanvas = $("gl"), marks = $("marks"), mctx = marks.getContext("2d"), overlay = $("overlay"),
      octx = overlay.getContext("2d");
const RING_COLOURS = ["#111111", "#ff00aa"];  // as dashboard/pointcloud.py: the first ring set black, then magenta
const gl = glCanvas.getContext("webgl2", { antialias: false, premultipliedAlpha: true, preserveDrawingBuffer: false });

function shader(type, src) {
  const s = gl.createShader(type);
  gl.shaderSource(s, src);
  gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
  return s;
}
function program(vs, fs) {
  const p = gl.createProgram();
  gl.attachShader(p, shader(gl.VERTEX_SHADER, vs));
  gl.attachShader(p, shader(gl.FRAGMENT_SHADER, fs));
  gl.linkProgram(p);
  if (!gl.getProgramParameter(p, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(p));
  const u = {};
  for (let i = 0; i < gl.getProgramParameter(p, gl.ACTIVE_UNIFORMS); i++) {
    const name = gl.getActiveUniform(p, i).name;
    u[name] = gl.getUniformLocation(p, name);
  }
  return { p, u };
}

let pointProg, quadProg, xyBuf, colBuf, quadBuf, paletteTex;
function initGL() {
  pointProg = program(`#version 300 es
    layout(location=0) in vec2 a_xy; layout(location=1) in float a_c;
    uniform vec2 u_scale, u_offset; uniform float u_size; uniform sampler2D u_palette;
    out vec4 v_col;
    void main() {
      gl_Position = vec4(a_xy * u_scale + u_offset, 0.0, 1.0);
      gl_PointSize = u_size;
      v_col = texelFetch(u_palette, ivec2(int(a_c), 0), 0);
    }`, `#version 300 es
    precision mediump float; in vec4 v_col; uniform float u_round; out vec4 o;
    void main() {
      if (u_round > 0.5) { vec2 d = gl_PointCoord - 0.5; if (dot(d, d) > 0.25) discard; }
      o = vec4(v_col.rgb * v_col.a, v_col.a);
    }`);
  quadProg = program(`#version 300 es
    layout(location=0) in vec2 a_q; uniform vec2 u_qs, u_qo; out vec2 v_uv;
    void main() { gl_Position = vec4(a_q * u_qs + u_qo, 0.0, 1.0); v_uv = a_q * 0.5 + 0.5; }`, `#version 300 es
    precision mediump float; in vec2 v_uv; uniform sampler2D u_tex; uniform float u_grey; uniform vec3 u_greyc;
    uniform float u_greya; out vec4 o;
    void main() {
      vec4 t = texture(u_tex, v_uv);
      o = u_grey > 0.5 ? vec4(u_greyc * t.a * u_greya, t.a * u_greya) : t;
    }`);
  xyBuf = gl.createBuffer(); colBuf = gl.createBuffer(); quadBuf = gl.createBuffer();
  gl.bindBuffer(gl.ARRAY_BUFFER, quadBuf);
  gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
  paletteTex = gl.createTexture();
  gl.enable(gl.BLEND);
  gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);  // premultiplied alpha throughout
}

function hexRgb(h) { const v = parseInt(h.slice(1), 16); return [(v >> 16) & 255, (v >> 8) & 255, v & 255]; }

function setPalette(hexes, alpha) {
  const px = new Uint8Array(256 * 4);
  for (let i = 0; i < 256; i++) {
    const [r, g, b] = i < hexes.length ? hexRgb(hexes[i]) : [0xbb, 0xbb, 0xbb];  // 255: no value
    px.set([r, g, b, Math.round(255 * alpha)], i * 4);
  }
  gl.bindTexture(gl.TEXTURE_2D, paletteTex);
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, 256, 1, 0, gl.RGBA, gl.UNSIGNED_BYTE, px);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
}

function makeTarget(w, h) {
  const tex = gl.createTexture();
  gl.bindTexture(gl.TEXTURE_2D, tex);
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA8, w, h, 0, gl.RGBA, gl.UNSIGNED_BYTE, null);
  for (const [k, v] of [[gl.TEXTURE_MIN_FILTER, gl.LINEAR], [gl.TEXTURE_MAG_FILTER, gl.LINEAR],
                        [gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE], [gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE]])
    gl.texParameteri(gl.TEXTURE_2D, k, v);
  const fbo = gl.createFramebuffer();
  gl.bindFramebuffer(gl.FRAMEBUFFER, fbo);
  gl.framebufferTexture2D(gl.FRAMEBUFFER, gl.COLOR_ATTACHMENT0, gl.TEXTURE_2D, tex, 0);
  gl.bindFramebuffer(gl.FRAMEBUFFER, null);
  return { tex, fbo };
}

// ------------------------------------------------------------------ geometry
const W = () => overlay.clientWidth, H = () => overlay.clientHeight;
function clipOf(v) {  // data -> clip space: clip = d * scale + offset
  const sx = 2 * v.ppu / W(), sy = 2 * v.ppu / H();
  return { sx, sy, ox: -v.cx * sx, oy: -v.cy * sy };
}
const toScreen = (x, y, v = S.view) => [W() / 2 + (x - v.cx) * v.ppu, H() / 2 - (y - v.cy) * v.ppu];
const toData = (px, py, v = S.view) => [v.cx + (px - W() / 2) / v.ppu, v.cy - (py - H() / 2) / v.ppu];

function homeView() {  // the central 99.8% of the galaxies (a few far outliers should not shrink the map)
  const step = Math.max(1, Math.floor(S.n / 50000)), xs = [], ys = [];
  for (let i = 0; i < S.n; i += step) { const x = S.x[i], y = S.y[i]; if (x === x && y === y) { xs.push(x); ys.push(y); } }
  if (!xs.length) return { cx: 0, cy: 0, ppu: Math.min(W(), H()) / 2 };
  xs.sort((a, b) => a - b); ys.sort((a, b) => a - b);
  const q = (v, f) => v[Math.min(v.length - 1, Math.max(0, Math.round(f * (v.length - 1))))];
  const x0 = q(xs, 0.001), x1 = q(xs, 0.999), y0 = q(ys, 0.001), y1 = q(ys, 0.999);
  const pad = 0.08, w = Math.max(x1 - x0, 1e-9), h = Math.max(y1 - y0, 1e-9);
  return { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, ppu: Math.min(W() / (w * (1 + pad)), H() / (h * (1 + pad))) };
}

function pointSize() {
  const zoom = S.home ? Math.sqrt(S.view.ppu / S.home.ppu) : 1;
  return Math.min(S.args.point_size * Math.max(1, zoom), 14);
}

// ------------------------------------------------------------------ hover index: a uniform grid, CSR layout
function buildGrid() {
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < S.n; i++) {
    const x = S.x[i], y = S.y[i];
    if (x === x && y === y) { if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y; }
  }
  const g = Math.max(8, Math.min(1024, Math.ceil(Math.sqrt(S.n / 4))));
  const cw = Math.max((x1 - x0) / g, 1e-12) * 1.0001, ch = Math.max((y1 - y0) / g, 1e-12) * 1.0001;
  const cell = new Int32Array(S.n), start = new Uint32Array(g * g + 1);
  for (let i = 0; i < S.n; i++) {
    const cx = Math.floor((S.x[i] - x0) / cw), cy = Math.floor((S.y[i] - y0) / ch);
    cell[i] = cx >= 0 && cy >= 0 && cx < g && cy < g ? cy * g + cx : -1;
    if (cell[i] >= 0) start[cell[i] + 1]++;
  }
  for (let c = 0; c < g * g; c++) start[c + 1] += start[c];
  const fill = start.slice(0, g * g), items = new Uint32Array(start[g * g]);
  for (let i = 0; i < S.n; i++) if (cell[i] >= 0) items[fill[cell[i]]++] = i;
  S.grid = { g, x0, y0, cw, ch, start, items };
}

function nearestPoint(px, py, radiusPx) {
  if (!S.grid && S.front) buildGrid();
  const G = S.grid; if (!G) return -1;
  const [dx, dy] = toData(px, py), r = radiusPx / S.view.ppu;
  const c0 = Math.max(0, Math.floor((dx - r - G.x0) / G.cw)), c1 = Math.min(G.g - 1, Math.floor((dx + r - G.x0) / G.cw));
  const r0 = Math.max(0, Math.floor((dy - r - G.y0) / G.ch)), r1 = Math.min(G.g - 1, Math.floor((dy + r - G.y0) / G.ch));
  let best = -1, bestD = r * r;
  for (let cy = r0; cy <= r1; cy++) for (let cx = c0; cx <= c1; cx++) {
    const c = cy * G.g + cx;
    for (let k = G.start[c]; k < G.start[c + 1]; k++) {
      const i = G.items[k], ex = S.x[i] - dx, ey = S.y[i] - dy, d = ex * ex + ey * ey;
      if (d <= bestD) { bestD = d; best = i; }
    }
  }
  return best;
}

// ------------------------------------------------------------------ data
// Asked for as a byte range ("bytes=0-": the whole file): Streamlit gzips other media responses on every
// request (level 5: about 1 s of server CPU per 11 MB of float32 columns, which shrink by only ~10%),
// but never a 206 answer, so the columns come straight from memory.
async function fetchBytes(url) {
  const base = APP_URL.endsWith("/") ? APP_URL : APP_URL + "/";
  const r = await fetch(new URL(url.replace(/^\//, ""), base), { headers: { Range: "bytes=0-" } });
  if (!r.ok) throw new Error(`could not fetch ${url}: HTTP ${r.status}`);
  const buf = await r.arrayBuffer();
  window.__bigmap.fetchedBytes += buf.byteLength;
  return buf;
}

function decodePoints(buf, n) {
  if (buf.byteLength < 11 * n) throw new Error(`point columns too short: ${buf.byteLength} bytes for ${n} galaxies`);
  S.n = n;
  S.x = new Float32Array(buf, 0, n); S.y = new Float32Array(buf, 4 * n, n);
  S.label = new Uint8Array(buf, 8 * n, n); S.pred = new Uint8Array(buf, 9 * n, n); S.conf = new Uint8Array(buf, 10 * n, n);
  // counting sort by true class: each class is one contiguous range of the vertex buffer (one layer)
  const counts = new Uint32Array(257);
  for (let i = 0; i < n; i++) counts[S.label[i] + 1]++;
  const at = new Uint32Array(256);
  for (let c = 0; c < 256; c++) { counts[c + 1] += counts[c]; at[c] = counts[c]; }
  S.order = new Uint32Array(n);
  for (let i = 0; i < n; i++) S.order[at[S.label[i]]++] = i;
  const xy = new Float32Array(2 * n);
  for (let k = 0; k < n; k++) { const i = S.order[k]; xy[2 * k] = S.x[i]; xy[2 * k + 1] = S.y[i]; }
  gl.bindBuffer(gl.ARRAY_BUFFER, xyBuf);
  gl.bufferData(gl.ARRAY_BUFFER, xy, gl.STATIC_DRAW);
  S.classRanges = [];
  for (let c = 0; c < 256; c++) if (counts[c + 1] > counts[c]) S.classRanges.push({ code: c, start: counts[c], count: counts[c + 1] - counts[c] });
  S.grid = null;  // the hover index is built right after the first paint: the map shows sooner
  window.__bigmap.loadedPoints = n;
  window.__bigmap.pointsReadyAt = performance.now();  // fetched, sorted by class, uploaded
}

function decodeColour(buf) {
  const col = new Uint8Array(buf);
  const sorted = new Uint8Array(S.n);
  for (let k = 0; k < S.n; k++) sorted[k] = col[S.order[k]];
  gl.bindBuffer(gl.ARRAY_BUFFER, colBuf);
  gl.bufferData(gl.ARRAY_BUFFER, sorted, gl.STATIC_DRAW);
  S.colour = col;
}

async function loadRing(url) {
  if (!S.rings[url]) S.rings[url] = new Uint32Array(await fetchBytes(url));
  return S.rings[url];
}

// ------------------------------------------------------------------ drawing
function resize() {
  const w = document.body.clientWidth, h = S.args.height;
  $("wrap").style.height = h + "px";
  for (const c of [glCanvas, marks, overlay]) {
    c.style.width = w + "px"; c.style.height = h + "px";
    c.width = Math.round(w * S.dpr); c.height = Math.round(h * S.dpr);
  }
  octx.setTransform(S.dpr, 0, 0, S.dpr, 0, 0);
  mctx.setTransform(S.dpr, 0, 0, S.dpr, 0, 0);
  for (const L of S.layers) for (const t of [L.front, L.back]) { gl.deleteTexture(t.tex); gl.deleteFramebuffer(t.fbo); }
  S.layers = (S.classRanges || []).map((r) => ({ ...r, front: makeTarget(glCanvas.width, glCanvas.height),
                                                 back: makeTarget(glCanvas.width, glCanvas.height) }));
  S.front = null;
}

function startRender() {  // draw every point into the back layers, a chunk per frame; swap when done
  S.job = [];
  S.renderView = Object.assign({}, S.view);
  S.renderStarted = performance.now();
  gl.clearColor(0, 0, 0, 0);
  for (const L of S.layers) {
    gl.bindFramebuffer(gl.FRAMEBUFFER, L.back.fbo);
    gl.clear(gl.COLOR_BUFFER_BIT);
    for (let s = 0; s < L.count; s += CHUNK) S.job.push({ L, start: L.start + s, count: Math.min(CHUNK, L.count - s) });
  }
  gl.bindFramebuffer(gl.FRAMEBUFFER, null);
  schedule();
}

function drawChunk({ L, start, count }) { drawPoints(L.back.fbo, S.renderView, start, count); }

function drawPoints(fbo, v, start, count) {  // points start..start+count (class-sorted order) into fbo (null: the screen)
  const t = clipOf(v), size = pointSize() * S.dpr;
  gl.bindFramebuffer(gl.FRAMEBUFFER, fbo);
  gl.viewport(0, 0, glCanvas.width, glCanvas.height);
  gl.useProgram(pointProg.p);
  gl.uniform2f(pointProg.u.u_scale, t.sx, t.sy);
  gl.uniform2f(pointProg.u.u_offset, t.ox, t.oy);
  gl.uniform1f(pointProg.u.u_size, size);
  gl.uniform1f(pointProg.u.u_round, size >= 3 ? 1 : 0);
  gl.activeTexture(gl.TEXTURE0);
  gl.bindTexture(gl.TEXTURE_2D, paletteTex);
  gl.uniform1i(pointProg.u.u_palette, 0);
  gl.bindBuffer(gl.ARRAY_BUFFER, xyBuf);
  gl.enableVertexAttribArray(0);
  gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
  gl.bindBuffer(gl.ARRAY_BUFFER, colBuf);
  gl.enableVertexAttribArray(1);
  gl.vertexAttribPointer(1, 1, gl.UNSIGNED_BYTE, false, 0, 0);
  gl.drawArrays(gl.POINTS, start, count);
  gl.bindFramebuffer(gl.FRAMEBUFFER, null);
}

function composite() {  // the layers onto the screen: grey ones first, then the coloured ones
  const useBack = !S.front, shown = useBack ? S.renderView : S.front;
  gl.bindFramebuffer(gl.FRAMEBUFFER, null);
  gl.viewport(0, 0, glCanvas.width, glCanvas.height);
  gl.clearColor(1, 1, 1, 1);
  gl.clear(gl.COLOR_BUFFER_BIT);
  if (!shown) return;
  const a = clipOf(shown), b = clipOf(S.view);  // rendered clip c0 -> current clip c1 = (c0 - o0) * s1/s0 + o1
  const kx = b.sx / a.sx, ky = b.sy / a.sy;
  gl.useProgram(quadProg.p);
  gl.uniform2f(quadProg.u.u_qs, kx, ky);
  gl.uniform2f(quadProg.u.u_qo, b.ox - a.ox * kx, b.oy - a.oy * ky);
  gl.uniform3f(quadProg.u.u_greyc, ...GREY);
  gl.uniform1f(quadProg.u.u_greya, GREY_ALPHA);
  gl.bindBuffer(gl.ARRAY_BUFFER, quadBuf);
  gl.enableVertexAttribArray(0);
  gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
  gl.disableVertexAttribArray(1);
  const hl = new Set(S.args.highlight || []);
  if (!hl.size && S.front && S.n <= DIRECT_MAX) {
    // Nothing highlighted: the layers in class order are exactly every point drawn in class order ("over" is
    // associative), and for a small map drawing them is cheaper than sampling every layer's texture.
    drawPoints(null, S.view, 0, S.n);
    window.__bigmap.composites++;
    window.__bigmap.highlight = "";
    return;
  }
  const grey = (L) => hl.size > 0 && !hl.has(L.code);
  const ordered = [...S.layers.filter(grey), ...S.layers.filter((L) => !grey(L))];
  gl.activeTexture(gl.TEXTURE0);
  gl.uniform1i(quadProg.u.u_tex, 0);
  for (const L of ordered) {
    gl.bindTexture(gl.TEXTURE_2D, useBack ? L.back.tex : L.front.tex);
    gl.uniform1f(quadProg.u.u_grey, grey(L) ? 1 : 0);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  }
  window.__bigmap.composites++;
  window.__bigmap.highlight = [...hl].sort((p, q) => p - q).join(",");
}

let pending = false;
function schedule() { if (!pending) { pending = true; requestAnimationFrame(frame); } }
function frame() {
  pending = false;
  let drawn = 0;
  // Nothing on screen yet (the first paint, a resize): draw every point in this frame; otherwise a chunk
  // per frame, so pan, zoom and hover stay responsive while a new view is drawn behind the shown one.
  const budget = S.front ? CHUNK : Infinity;
  while (S.job.length && drawn < budget) { const c = S.job.shift(); drawChunk(c); drawn += c.count; }
  if (drawn && !S.job.length) {  // this view is complete: make it the front
    for (const L of S.layers) [L.front, L.back] = [L.back, L.front];
    S.front = Object.assign({}, S.renderView);
    S.frontSeq = (S.frontSeq || 0) + 1;
    gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));  // wait for the GPU: honest timings
    window.__bigmap.lastRenderMs = performance.now() - S.renderStarted;
    if (!window.__bigmap.paints) { window.__bigmap.firstPaintAt = performance.now(); mark("points drawn"); }
    if (!S.grid) setTimeout(() => { if (!S.grid) buildGrid(); }, 0);
    window.__bigmap.paints++;
    status(`${S.n.toLocaleString()} galaxies · drawn in ${(window.__bigmap.lastRenderMs / 1000).toFixed(1)} s`
           + " · wheel zooms, double-click resets");
  }
  // Composite the layers and redraw the marks only when what they show changed (the view, the drawn
  // layers, the highlight, the rings): with software WebGL each full-screen layer costs milliseconds.
  const view = S.view ? `${S.view.cx},${S.view.cy},${S.view.ppu}` : "";
  const shown = `${view}|${S.frontSeq}|${(S.args && S.args.highlight || []).join(",")}`;
  if (S.front && shown !== S.shownKey) {
    composite();
    S.shownKey = shown;
    if (window.__bigmap.paints === 1 && !("shown" in window.__bigmap.marks)) {
      gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array(4));
      mark("shown");
    }
  }
  if (view !== S.marksKey) { drawMarks(); S.marksKey = view; }
  drawOverlay();
  const trip = window.__bigmap.trip;
  if (trip && trip.rings && !trip.drawn) trip.drawn = performance.now();
  if (S.job.length) schedule();
}

// The ring sets to draw: the server's (a confusion cell, the selection), except that the user's own
// box/lasso (S.local, computed here) stands for the selection until the server's selection has come.
function ringsToDraw() {
  const out = [], local = S.local;
  for (const ring of S.ringSets || []) {
    if (ring.selection && local) continue;
    const pos = S.rings[ring.url];
    if (pos) out.push({ colour: ring.colour, pos });
  }
  if (local) {
    const sel = (S.ringSets || []).find((r) => r.selection);
    const others = (S.ringSets || []).filter((r) => !r.selection).length;
    out.push({ colour: sel ? sel.colour : RING_COLOURS[Math.min(others, 1)], pos: local.pos });
  }
  return out;
}

function drawMarks() {
  mctx.clearRect(0, 0, W(), H());
  let ringsShown = 0, img = null;
  const sets = ringsToDraw();
  // A big set (a lasso of 100k galaxies) is shading: 3-px squares written straight into pixels (a few ms
  // for a million, where canvas paths took seconds); small sets are rings drawn on top.
  for (const { colour, pos } of sets) {
    if (pos.length <= 4000) continue;
    if (!img) img = mctx.createImageData(marks.width, marks.height);
    ringsShown += shade(new Uint32Array(img.data.buffer), marks.width, marks.height, pos, colour);
  }
  if (img) mctx.putImageData(img, 0, 0);
  const r = Math.max(pointSize() * 1.1, 4.5);
  for (const { colour, pos } of sets) {
    if (pos.length > 4000) continue;
    mctx.strokeStyle = colour; mctx.lineWidth = 1.5;
    mctx.beginPath();
    for (let k = 0; k < pos.length; k++) {
      const i = pos[k]; if (i >= S.n) continue;
      const [sx, sy] = toScreen(S.x[i], S.y[i]);
      if (sx < -r || sy < -r || sx > W() + r || sy > H() + r) continue;
      mctx.moveTo(sx + r, sy); mctx.arc(sx, sy, r, 0, 2 * Math.PI);
      ringsShown++;
    }
    mctx.stroke();
  }
  window.__bigmap.ringsShown = ringsShown;
  const stars = S.args && S.args.stars;
  if (stars) for (let k = 0; k < stars.x.length; k++) {
    const [sx, sy] = toScreen(stars.x[k], stars.y[k]);
    star(sx, sy, 7);
  }
}

function shade(px, w, h, pos, colour) {  // -> how many of pos are on screen
  const [cr, cg, cb] = hexRgb(colour), rgba = ((115 << 24) | (cb << 16) | (cg << 8) | cr) >>> 0;  // alpha 0.45
  const v = S.view, d = S.dpr, k = v.ppu * d, ax = (W() / 2 - v.cx * v.ppu) * d, ay = (H() / 2 + v.cy * v.ppu) * d;
  const half = Math.max(1, Math.round(1.5 * d)), side = 2 * half;
  let shown = 0;
  for (let j = 0; j < pos.length; j++) {
    const i = pos[j]; if (i >= S.n) continue;
    const x0 = Math.round(ax + S.x[i] * k) - half, y0 = Math.round(ay - S.y[i] * k) - half;
    if (!(x0 > -side && y0 > -side && x0 < w && y0 < h)) continue;  // off screen (or NaN)
    shown++;
    const xa = Math.max(0, x0), xb = Math.min(w, x0 + side), yb = Math.min(h, y0 + side);
    for (let y = Math.max(0, y0); y < yb; y++) px.fill(rgba, y * w + xa, y * w + xb);
  }
  return shown;
}

// Frame positions inside a polygon [[x, y], ...] in map coordinates, by the even-odd rule (as the server's
// pointcloud.positions_in_polygon): candidates from the hover grid's cells under its bounding box.
function pointsInPolygon(poly) {
  if (!S.grid) buildGrid();
  const G = S.grid, m = poly.length, px = Float64Array.from(poly, (p) => p[0]), py = Float64Array.from(poly, (p) => p[1]);
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let e = 0; e < m; e++) { x0 = Math.min(x0, px[e]); x1 = Math.max(x1, px[e]); y0 = Math.min(y0, py[e]); y1 = Math.max(y1, py[e]); }
  const c0 = Math.max(0, Math.floor((x0 - G.x0) / G.cw)), c1 = Math.min(G.g - 1, Math.floor((x1 - G.x0) / G.cw));
  const r0 = Math.max(0, Math.floor((y0 - G.y0) / G.ch)), r1 = Math.min(G.g - 1, Math.floor((y1 - G.y0) / G.ch));
  let out = new Uint32Array(1024), n = 0;
  for (let cy = r0; cy <= r1; cy++) for (let cx = c0; cx <= c1; cx++) {
    const c = cy * G.g + cx;
    for (let k = G.start[c]; k < G.start[c + 1]; k++) {
      const i = G.items[k], x = S.x[i], y = S.y[i];
      if (x < x0 || x > x1 || y < y0 || y > y1) continue;
      let inside = false;
      for (let e = 0, f = m - 1; e < m; f = e++) {
        const ay = py[f], by = py[e];
        if ((ay > y) !== (by > y) && x < px[f] + (y - ay) * (px[e] - px[f]) / (by - ay)) inside = !inside;
      }
      if (inside) { if (n === out.length) { const o = new Uint32Array(2 * n); o.set(out); out = o; } out[n++] = i; }
    }
  }
  return out.subarray(0, n);
}

function drawOverlay() {  // cheap: runs on every pointer move
  octx.clearRect(0, 0, W(), H());
  if (S.shape && S.shape.length > 1) {
    octx.strokeStyle = "#333"; octx.setLineDash([4, 3]); octx.lineWidth = 1;
    octx.beginPath();
    S.shape.forEach(([x, y], k) => { const [sx, sy] = toScreen(x, y); k ? octx.lineTo(sx, sy) : octx.moveTo(sx, sy); });
    octx.closePath(); octx.stroke(); octx.setLineDash([]);
  }
  if (S.hoverStar >= 0) {
    const stars = S.args.stars, [sx, sy] = toScreen(stars.x[S.hoverStar], stars.y[S.hoverStar]);
    star(sx, sy, 10);
  }
  if (S.hover >= 0) {
    const [sx, sy] = toScreen(S.x[S.hover], S.y[S.hover]);
    octx.strokeStyle = "#000"; octx.lineWidth = 2;
    octx.beginPath(); octx.arc(sx, sy, Math.max(pointSize(), 4) + 2, 0, 2 * Math.PI); octx.stroke();
  }
}

function star(x, y, r, c = r > 8 ? octx : mctx) {
  c.beginPath();
  for (let k = 0; k < 10; k++) {
    const a = -Math.PI / 2 + k * Math.PI / 5, rr = k % 2 ? r * 0.45 : r;
    k ? c.lineTo(x + rr * Math.cos(a), y + rr * Math.sin(a)) : c.moveTo(x + rr * Math.cos(a), y + rr * Math.sin(a));
  }
  c.closePath(); c.fillStyle = "gold"; c.fill(); c.strokeStyle = "#000"; c.lineWidth = 1; c.stroke();
}

function status(text) { $("status").textContent = text; }

// ------------------------------------------------------------------ legend and tooltip
function legend() {
  const c = S.args.colour, el = $("legend");
  if (c.kind === "numeric") {
    const stops = c.palette.filter((_, i) => i % 32 === 0 || i === c.palette.length - 1).join(",");
    el.innerHTML = `<b>${esc(c.label)}</b><div class="bar" style="background:linear-gradient(90deg,${stops})"></div>`
      + `${fmt(c.lo)} … ${fmt(c.hi)}`;
  } else {
    el.innerHTML = c.legend.map(([name, colour, count]) =>
      `<div><span class="sw" style="background:${colour}"></span>${esc(name)} (${count.toLocaleString()})</div>`).join("");
  }
}
const esc = (s) => String(s).replace(/[&<>"]/g, (ch) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[ch]));
const fmt = (v) => (Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(2) : +v.toPrecision(3)).toString();
const className = (code) => (code === 0 ? "unlabelled" : S.args.classes[code - 1] ?? `class ${code - 1}`);

function showTip(px, py) {
  const tip = $("tip");
  let html = null;
  if (S.hoverStar >= 0) {
    html = S.args.stars.text[S.hoverStar];
  } else if (S.hover >= 0) {
    const i = S.hover, info = S.args.hover && S.args.hover.pos === i ? S.args.hover : null;
    html = `<b>${info ? esc(info.id) : "galaxy …"}</b><br>true: ${esc(className(S.label[i]))}`;
    if (S.args.has_predictions && S.pred[i] > 0)
      html += `<br>predicted: ${esc(className(S.pred[i]))} (${(S.conf[i] / 250).toFixed(2)})`;
    const c = S.args.colour;
    if (c.kind === "numeric" && c.label !== "confidence" && S.colour)
      html += `<br>${esc(c.label)}: ${S.colour[i] === 255 ? "none" : "≈" + fmt(c.lo + (c.hi - c.lo) * S.colour[i] / 254)}`;
    if (info && info.lines) for (const line of info.lines) html += `<br>${esc(line)}`;
    if (info && info.thumb) html += `<img src="${info.thumb}" alt="thumbnail">`;
    else html += `<br><span style="color:#888">(rest here for its id and image)</span>`;
  }
  if (!html) { tip.style.display = "none"; return; }
  tip.innerHTML = html;
  tip.style.display = "block";
  const w = tip.offsetWidth, h = tip.offsetHeight;
  tip.style.left = Math.min(px + 14, W() - w - 4) + "px";
  tip.style.top = Math.max(4, Math.min(py + 14, H() - h - 4)) + "px";
}

let dwell = null, asked = -1;
function hoverAt(px, py) {
  let best = -1;
  const stars = S.args.stars;
  if (stars) for (let k = 0; k < stars.x.length; k++) {
    const [sx, sy] = toScreen(stars.x[k], stars.y[k]);
    if (Math.hypot(sx - px, sy - py) < 9) best = k;
  }
  S.hoverStar = best;
  S.hover = best >= 0 ? -1 : nearestPoint(px, py, Math.max(5, pointSize()));
  showTip(px, py);
  drawOverlay();
  clearTimeout(dwell);
  if (S.hover >= 0 && asked !== S.hover) {  // resting on a galaxy: ask the server for its id and thumbnail
    const i = S.hover;
    dwell = setTimeout(() => { if (S.hover === i) { asked = i; send({ event: "hover", pos: i }); } }, 350);
  }
}

function send(value) {
  window.__bigmap.events++;
  window.__bigmap.trip = { sent: performance.now() };  // -> args (the server's answer) -> rings -> drawn
  window.__bigmap.lastEvent = value;
  setValue(Object.assign({ seq: Date.now() + Math.random() }, value));
}

// ------------------------------------------------------------------ interaction
function local(e) { const b = overlay.getBoundingClientRect(); return [e.clientX - b.left, e.clientY - b.top]; }

overlay.addEventListener("mousedown", (e) => {
  if (!S.n) return;
  const [px, py] = local(e);
  S.drag = { px, py, view: Object.assign({}, S.view), moved: false, path: [toData(px, py)] };
});
window.addEventListener("mousemove", (e) => {
  if (!S.n) return;
  const [px, py] = local(e);
  S.mouse = [px, py];
  const d = S.drag;
  if (!d) { hoverAt(px, py); return; }
  if (Math.hypot(px - d.px, py - d.py) > 3) d.moved = true;
  if (!d.moved) return;
  $("tip").style.display = "none"; S.hover = -1;
  if (S.mode === "pan") {
    S.view.cx = d.view.cx - (px - d.px) / d.view.ppu;
    S.view.cy = d.view.cy + (py - d.py) / d.view.ppu;
    schedule();
  } else if (S.mode === "box") {
    const [x0, y0] = toData(d.px, d.py), [x1, y1] = toData(px, py);
    S.shape = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]];
    drawOverlay();
  } else {
    d.path.push(toData(px, py));
    S.shape = d.path;
    drawOverlay();
  }
});
window.addEventListener("mouseup", (e) => {
  const d = S.drag; S.drag = null;
  if (!d) return;
  if (!d.moved) {  // a click: select that galaxy (the gallery then offers its neighbours)
    if (S.hover >= 0) send({ event: "click", pos: S.hover });
    return;
  }
  if (S.mode === "pan") { viewChanged(); return; }
  let poly = S.shape || [];
  if (poly.length > 120) { const step = poly.length / 120; poly = Array.from({ length: 120 }, (_, k) => poly[Math.floor(k * step)]); }
  if (poly.length < 3) return;
  poly = poly.map(([x, y]) => [+x.toPrecision(7), +y.toPrecision(7)]);
  // The event leaves first, so the server works on it while the same galaxies are found here (10M
  // points: ~0.4 s) and ringed at once; the server then answers with them (its gallery and counts).
  const token = (S.selectToken = (S.selectToken || 0) + 1);
  send({ event: "select", shape: S.mode, polygon: poly });
  setTimeout(() => {
    if (S.selectToken !== token) return;  // the server's answer came first, or another gesture
    S.local = { pos: pointsInPolygon(poly), at: performance.now() };
    window.__bigmap.localSelected = S.local.pos.length;
    S.marksKey = null;
    schedule();
  }, 0);
});
overlay.addEventListener("mouseleave", () => { S.hover = -1; S.hoverStar = -1; $("tip").style.display = "none"; drawOverlay(); });
overlay.addEventListener("wheel", (e) => {
  if (!S.n) return;
  e.preventDefault();
  const [px, py] = local(e), [dx, dy] = toData(px, py);
  const f = Math.exp(-e.deltaY * 0.0015);
  S.view.ppu = Math.min(Math.max(S.view.ppu * f, S.home.ppu * 0.5), S.home.ppu * 2000);
  S.view.cx = dx - (px - W() / 2) / S.view.ppu;
  S.view.cy = dy + (py - H() / 2) / S.view.ppu;
  schedule();
  viewChanged();
}, { passive: false });
overlay.addEventListener("dblclick", () => { if (S.home) { S.view = Object.assign({}, S.home); viewChanged(0); } });
$("reset").addEventListener("click", () => { if (S.home) { S.view = Object.assign({}, S.home); viewChanged(0); } });
for (const b of document.querySelectorAll("#tools button[data-mode]")) b.addEventListener("click", () => {
  S.mode = b.dataset.mode;
  for (const o of document.querySelectorAll("#tools button[data-mode]")) o.classList.toggle("on", o === b);
});

let settle = null;
function viewChanged(delay = 250) {  // redraw the points for the new view once the gesture has settled
  schedule();
  clearTimeout(settle);
  settle = setTimeout(startRender, delay);
}

// ------------------------------------------------------------------ render messages from Streamlit
let queue = Promise.resolve();
window.addEventListener("message", (event) => {
  if (!event.data || event.data.type !== "streamlit:render") return;
  const args = event.data.args;
  queue = queue.then(() => update(args)).catch((err) => {
    window.__bigmap.error = String(err && err.message || err);
    status(`The map could not be drawn: ${window.__bigmap.error}`);
    console.error(err);
  });
});

function fetchOnce(url, label) {  // one request per file, started as soon as its URL is known
  if (!S.fetches[url]) S.fetches[url] = fetchBytes(url).then((buf) => { mark(label + " fetched"); return buf; });
  return S.fetches[url];
}

async function update(args) {
  const prev = S.args, B = window.__bigmap;
  mark("args");  // the first render message (Streamlit's arguments) arrived
  if (prev) B.trip = Object.assign(B.trip && !B.trip.args ? B.trip : {}, { args: performance.now() });
  S.args = args;
  if (!prev || prev.height !== args.height) setHeight(args.height);
  const newPoints = S.urls.points !== args.points_url, newColour = newPoints || S.urls.colour !== args.colour_url;
  // every file this render needs is asked for at once: points, colour and rings download in parallel
  const points = newPoints ? fetchOnce(args.points_url, "points") : null;
  const colour = newColour ? fetchOnce(args.colour_url, "colour") : null;
  const ringSets = args.rings || [];
  const answer = !!(B.trip && B.trip.sent && prev);  // the server's answer to an event sent from here
  const rings = Promise.all(ringSets.map((r) => loadRing(r.url))).then(() => {
    if (B.trip && prev && !B.trip.rings) B.trip.rings = performance.now();
    const sel = ringSets.find((r) => r.selection);
    if (answer && sel && S.rings[sel.url]) {  // the server's selection replaces ours (or one not yet computed)
      S.local = null;
      S.selectToken = (S.selectToken || 0) + 1;
    }
    S.marksKey = null;
    schedule();
  });
  let redraw = false;
  if (newPoints) {
    status(`loading ${args.n.toLocaleString()} galaxies…`);
    B.argsAt = performance.now();
    decodePoints(await points, args.n);
    delete S.fetches[args.points_url];
    mark("points decoded");
    S.urls.points = args.points_url; S.urls.colour = null;
    resize();
    S.home = homeView();  // after resize: the home view fits the canvas as shown
    S.view = Object.assign({}, S.home);
    redraw = true;
  }
  if (newColour) {
    setPalette(args.colour.palette, args.colour.alpha);
    decodeColour(await colour);
    delete S.fetches[args.colour_url];
    mark("colour decoded");
    S.urls.colour = args.colour_url;
    legend();
    redraw = true;
  }
  if (!prev || prev.point_size !== args.point_size) redraw = true;
  S.ringSets = ringSets;
  S.marksKey = null;  // rings, stars or the highlight may have changed: redraw the marks
  // no selection in the server's arguments (nothing was inside, or Clear selection): ours goes too
  if (S.local && !ringSets.some((r) => r.selection)) S.local = null;
  if (!S.ringSets.some((r) => r.selection) && !S.local) S.shape = null;
  if (!ringSets.length && B.trip && prev && !B.trip.rings) B.trip.rings = performance.now();
  if (redraw) startRender();
  if ((S.hover >= 0 || S.hoverStar >= 0) && S.mouse) showTip(...S.mouse);  // the id and image may have come
  schedule();
}

window.addEventListener("resize", () => {
  if (!S.args || !S.n || Math.abs(document.body.clientWidth - W()) < 2) return;
  const home = S.home;
  resize();
  S.home = homeView();
  S.view = { cx: S.view.cx, cy: S.view.cy, ppu: S.view.ppu * S.home.ppu / home.ppu };
  startRender();
});

// Pixels of the map that are not background: the browser test's proof that points reach the screen.
window.__bigmap.inkedPixels = () => {
  composite();
  const w = glCanvas.width, h = glCanvas.height, px = new Uint8Array(w * h * 4);
  gl.readPixels(0, 0, w, h, gl.RGBA, gl.UNSIGNED_BYTE, px);
  let k = 0;
  for (let i = 0; i < px.length; i += 4) if (px[i] < 200 || px[i + 1] < 200 || px[i + 2] < 200) k++;
  return k;
};

if (!gl) {
  status("This browser offers no WebGL2, which the large-map view needs (try a current Chrome, Firefox or Safari).");
  window.__bigmap.error = "no WebGL2";
} else {
  initGL();
}
post("streamlit:componentReady", { apiVersion: 1 });
