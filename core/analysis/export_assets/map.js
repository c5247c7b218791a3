// The exported map: unpacks the embedded columns and draws them with WebGL. No network, no libraries.
(async function () {
  "use strict";
  const phases = { script: performance.now() };
  const $ = (id) => document.getElementById(id);
  const status = (t) => { $("status").textContent = t; };
  const b64 = $("payload").textContent.trim();
  let stream;
  try {  // the browser's own base64 decoder: a data: URL, fetched without any network
    stream = (await fetch("data:application/octet-stream;base64," + b64)).body;
  } catch (e) {
    const packed = new Uint8Array(atob(b64).split("").map((c) => c.charCodeAt(0)));
    stream = new Blob([packed]).stream();
  }
  const buf = await new Response(stream.pipeThrough(new DecompressionStream("gzip"))).arrayBuffer();
  phases.unpacked = performance.now();
  const hlen = new DataView(buf).getUint32(0, true);
  const H = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, hlen)));
  const n = H.n;
  let off = 4 + hlen;
  const f32 = () => { const a = new Float32Array(buf, off, n); off += 4 * n; return a; };
  const X = f32(), Y = f32();
  const RA = H.has_sky ? f32() : null, DEC = H.has_sky ? f32() : null;
  let SLOT = null;
  if (H.thumbs.sides.length) { SLOT = new Int32Array(buf, off, n); off += 4 * n; }
  const u8 = () => { const a = new Uint8Array(buf, off, n); off += n; return a; };
  const CLS = u8(), PRED = u8(), CONF = u8();
  const IDS = new TextDecoder().decode(new Uint8Array(buf, off)).split("\n");

  $("title").textContent = H.title;
  $("note").textContent = H.note;
  const q = H.quality && H.quality.knn_preservation != null ? ` · kNN preservation ${H.quality.knn_preservation.toFixed(3)}` : "";
  $("meta").textContent = `${n.toLocaleString()} galaxies · ${H.dataset} · ${H.model} (${H.mode}) · ${H.method} map${q} · exported ${H.exported}`;

  // ---------------------------------------------------------------- view transform
  const box = $("mapbox"), W = box.clientWidth, Hh = box.clientHeight, dpr = window.devicePixelRatio || 1;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = X[i], y = Y[i];
    if (x === x && y === y) { if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y; }
  }
  const span = Math.max(x1 - x0, y1 - y0) * 1.05 || 1;
  const view = { cx: (x0 + x1) / 2, cy: (y0 + y1) / 2, scale: Math.min(W, Hh) / span };
  const toScreen = (i) => [W / 2 + (X[i] - view.cx) * view.scale, Hh / 2 - (Y[i] - view.cy) * view.scale];

  // ---------------------------------------------------------------- WebGL points
  const glc = $("gl"), ov = $("overlay");
  for (const c of [glc, ov]) { c.width = W * dpr; c.height = Hh * dpr; c.style.width = W + "px"; c.style.height = Hh + "px"; }
  const gl = glc.getContext("webgl", { antialias: false, preserveDrawingBuffer: true });
  if (!gl) { status("This browser has no WebGL: the map cannot be drawn."); return; }
  const sh = (type, src) => { const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s); return s; };
  const prog = gl.createProgram();
  gl.attachShader(prog, sh(gl.VERTEX_SHADER, `
    attribute vec2 p; attribute vec4 c; uniform vec2 centre; uniform vec2 k; uniform float size; varying vec4 vc;
    void main() { gl_Position = vec4((p - centre) * k, c.a > 0.6 ? -0.5 : 0.5, 1.0); gl_PointSize = size; vc = c; }`));
  gl.attachShader(prog, sh(gl.FRAGMENT_SHADER, `
    precision mediump float; varying vec4 vc;
    void main() { vec2 d = gl_PointCoord - 0.5; if (dot(d, d) > 0.25) discard; gl_FragColor = vec4(vc.rgb, 1.0); }`));
  gl.linkProgram(prog); gl.useProgram(prog);
  const pos = new Float32Array(2 * n);
  for (let i = 0; i < n; i++) { pos[2 * i] = X[i]; pos[2 * i + 1] = Y[i]; }
  const pbuf = gl.createBuffer(); gl.bindBuffer(gl.ARRAY_BUFFER, pbuf); gl.bufferData(gl.ARRAY_BUFFER, pos, gl.STATIC_DRAW);
  const pl = gl.getAttribLocation(prog, "p"); gl.enableVertexAttribArray(pl); gl.vertexAttribPointer(pl, 2, gl.FLOAT, false, 0, 0);
  const cbuf = gl.createBuffer(), cl = gl.getAttribLocation(prog, "c");
  const rgb = H.colours.map((h) => [parseInt(h.slice(1, 3), 16), parseInt(h.slice(3, 5), 16), parseInt(h.slice(5, 7), 16)]);
  const highlight = new Set(H.highlight);
  const colours = new Uint8Array(4 * n);
  function recolour() {
    const any = highlight.size > 0;
    for (let i = 0; i < n; i++) {
      const c = CLS[i] - 1, lit = c >= 0 && (!any || highlight.has(c));
      const col = lit ? rgb[c] : [205, 205, 205];
      colours.set([col[0], col[1], col[2], lit ? 255 : 0], 4 * i);
    }
    gl.bindBuffer(gl.ARRAY_BUFFER, cbuf); gl.bufferData(gl.ARRAY_BUFFER, colours, gl.DYNAMIC_DRAW);
    gl.enableVertexAttribArray(cl); gl.vertexAttribPointer(cl, 4, gl.UNSIGNED_BYTE, true, 0, 0);
  }
  const size = Math.max(2, Math.min(7, 900 / Math.sqrt(n))) * dpr;
  function draw() {
    gl.viewport(0, 0, glc.width, glc.height);
    gl.clearColor(1, 1, 1, 1); gl.enable(gl.DEPTH_TEST); gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    gl.uniform2f(gl.getUniformLocation(prog, "centre"), view.cx, view.cy);
    gl.uniform2f(gl.getUniformLocation(prog, "k"), 2 * view.scale / W, 2 * view.scale / Hh);
    gl.uniform1f(gl.getUniformLocation(prog, "size"), size);
    gl.drawArrays(gl.POINTS, 0, n);
    drawRings();
  }

  // ---------------------------------------------------------------- rings (a confusion cell, a selection)
  let rings = H.rings || [], ringLabel = H.ring_label || "";
  const octx = ov.getContext("2d");
  function drawRings() {
    octx.setTransform(dpr, 0, 0, dpr, 0, 0); octx.clearRect(0, 0, W, Hh);
    octx.strokeStyle = "#000"; octx.lineWidth = 1.5; octx.beginPath();
    for (const i of rings.slice(0, 20000)) { const [sx, sy] = toScreen(i); octx.moveTo(sx + 6, sy); octx.arc(sx, sy, 6, 0, 2 * Math.PI); }
    octx.stroke();
    $("rings").innerHTML = rings.length ? `<p><b>Ringed:</b> ${escapeHtml(ringLabel)} (${rings.length.toLocaleString()})
      <button id="clearrings">clear</button></p>` : "";
    if (rings.length) $("clearrings").onclick = () => { rings = []; ringLabel = ""; markCell(null); draw(); };
  }
  const escapeHtml = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);

  // ---------------------------------------------------------------- legend
  function legend() {
    const counts = new Array(H.classes.length).fill(0);
    for (let i = 0; i < n; i++) if (CLS[i]) counts[CLS[i] - 1]++;
    $("legend").innerHTML = H.classes.map((c, i) =>
      `<div data-c="${i}" class="${highlight.has(i) ? "on" : ""}"><span class="sw" style="background:${H.colours[i]}"></span>` +
      `${escapeHtml(c)} <small>(${counts[i].toLocaleString()})</small></div>`).join("");
    for (const d of $("legend").children) d.onclick = () => {
      const c = +d.dataset.c; highlight.has(c) ? highlight.delete(c) : highlight.add(c);
      d.classList.toggle("on"); recolour(); draw();
    };
  }

  // ---------------------------------------------------------------- confusion matrix
  function markCell(td) { for (const t of document.querySelectorAll("td.chosen")) t.classList.remove("chosen"); if (td) td.classList.add("chosen"); }
  function confusion() {
    if (!H.confusion) { $("cmbox").innerHTML = "<p><small>This checkpoint has no classification head: no confusion matrix.</small></p>"; return; }
    const short = (s) => s.length > 14 ? s.slice(0, 13) + "…" : s;
    let t = "<p><b>Confusion</b> <small>(rows: given class, columns: predicted; click a cell to ring its galaxies)</small></p><table class='cm'><tr><th></th>" +
      H.classes.map((c) => `<th title="${escapeHtml(c)}">${escapeHtml(short(c))}</th>`).join("") + "</tr>";
    const max = Math.max(1, ...H.confusion.flat());
    H.confusion.forEach((row, a) => {
      t += `<tr><th class="r">${escapeHtml(short(H.classes[a]))}</th>` + row.map((v, b) =>
        `<td class="cell" data-t="${a}" data-p="${b}" style="background:rgba(70,110,200,${(0.85 * v / max).toFixed(3)})">${v}</td>`).join("") + "</tr>";
    });
    $("cmbox").innerHTML = t + "</table>";
    for (const td of document.querySelectorAll("td.cell")) td.onclick = () => {
      const a = +td.dataset.t, b = +td.dataset.p;
      rings = []; for (let i = 0; i < n; i++) if (CLS[i] === a + 1 && PRED[i] === b + 1) rings.push(i);
      ringLabel = `${H.classes[a]} predicted as ${H.classes[b]}`; markCell(td); draw();
    };
  }

  // ---------------------------------------------------------------- hover: a grid of the points
  const G = 128, cellOf = new Int32Array(n), start = new Int32Array(G * G + 1), order = new Int32Array(n);
  const gx = (x) => Math.max(0, Math.min(G - 1, Math.floor((x - x0) / ((x1 - x0) || 1) * G)));
  const gy = (y) => Math.max(0, Math.min(G - 1, Math.floor((y - y0) / ((y1 - y0) || 1) * G)));
  for (let i = 0; i < n; i++) { cellOf[i] = X[i] === X[i] ? gy(Y[i]) * G + gx(X[i]) : -1; if (cellOf[i] >= 0) start[cellOf[i] + 1]++; }
  for (let c = 0; c < G * G; c++) start[c + 1] += start[c];
  const fill = start.slice(0, G * G);
  for (let i = 0; i < n; i++) if (cellOf[i] >= 0) order[fill[cellOf[i]]++] = i;
  function nearest(sx, sy, radius) {
    const x = view.cx + (sx - W / 2) / view.scale, y = view.cy - (sy - Hh / 2) / view.scale, r = radius / view.scale;
    let best = -1, bd = r * r;
    for (let cy = gy(y - r); cy <= gy(y + r); cy++) for (let cx = gx(x - r); cx <= gx(x + r); cx++) {
      const c = cy * G + cx;
      for (let j = start[c]; j < start[c + 1]; j++) {
        const i = order[j], dx = X[i] - x, dy = Y[i] - y, d = dx * dx + dy * dy;
        if (d < bd) { bd = d; best = i; }
      }
    }
    return best;
  }
  function tipHtml(i) {
    const c = CLS[i] ? H.classes[CLS[i] - 1] : "unlabelled";
    let t = "";
    if (SLOT && SLOT[i] >= 0) {
      const s = Math.floor(SLOT[i] / H.thumbs.per_sheet), k = SLOT[i] % H.thumbs.per_sheet, side = H.thumbs.sides[s], px = H.thumbs.px;
      t += `<div class="thumb" style="background-image:url(${$("sheet" + s).src});background-position:-${(k % side) * px}px -${Math.floor(k / side) * px}px"></div>`;
    }
    t += `<b>${escapeHtml(IDS[i])}</b><br>class: ${escapeHtml(c)}`;
    if (H.has_pred && PRED[i]) {
      const ok = PRED[i] === CLS[i] ? "✓" : "✗";
      t += `<br>${ok} predicted: ${escapeHtml(H.classes[PRED[i] - 1])}` + (CONF[i] < 255 ? ` (${(CONF[i] / 250).toFixed(2)})` : "");
    }
    if (RA && RA[i] === RA[i]) t += `<br>RA ${RA[i].toFixed(5)}°, Dec ${DEC[i] >= 0 ? "+" : ""}${DEC[i].toFixed(5)}°`;
    return t + '<div style="clear:both"></div>';
  }
  const tip = $("tip");
  function hover(sx, sy) {
    const i = nearest(sx, sy, 8);
    if (i < 0) { tip.style.display = "none"; return -1; }
    tip.innerHTML = tipHtml(i); tip.style.display = "block";
    tip.style.left = Math.min(sx + 12, W - 200) + "px"; tip.style.top = Math.min(sy + 12, Hh - 90) + "px";
    tip.dataset.id = IDS[i];
    return i;
  }

  // ---------------------------------------------------------------- zoom and pan
  let drag = null, pending = false;
  const redraw = () => { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; draw(); }); } };
  box.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = box.getBoundingClientRect(), sx = e.clientX - r.left, sy = e.clientY - r.top;
    const px = view.cx + (sx - W / 2) / view.scale, py = view.cy - (sy - Hh / 2) / view.scale;
    view.scale *= Math.exp(-e.deltaY * 0.0015);
    view.cx = px - (sx - W / 2) / view.scale; view.cy = py + (sy - Hh / 2) / view.scale; redraw();
  }, { passive: false });
  box.addEventListener("mousedown", (e) => { drag = { x: e.clientX, y: e.clientY, cx: view.cx, cy: view.cy }; });
  window.addEventListener("mouseup", () => { drag = null; });
  box.addEventListener("mousemove", (e) => {
    const r = box.getBoundingClientRect();
    if (drag) { view.cx = drag.cx - (e.clientX - drag.x) / view.scale; view.cy = drag.cy + (e.clientY - drag.y) / view.scale; redraw(); return; }
    hover(e.clientX - r.left, e.clientY - r.top);
  });
  box.addEventListener("mouseleave", () => { tip.style.display = "none"; });

  recolour(); legend(); confusion();
  if (H.ring_label && H.rings.length) {  // mark the chosen cell in the matrix
    for (const td of document.querySelectorAll("td.cell")) {
      if (`${H.classes[+td.dataset.t]} predicted as ${H.classes[+td.dataset.p]}` === H.ring_label) markCell(td);
    }
  }
  phases.ready = performance.now();
  draw(); gl.finish();
  phases.drawn = performance.now();
  const thumbs = H.thumbs.count ? ` · thumbnails for ${H.thumbs.count.toLocaleString()} galaxies` : "";
  status(`Hover a galaxy for its details; scroll to zoom, drag to pan${thumbs}.`);
  // for scripts and tests: where a galaxy is drawn, and a programmatic hover
  window.galaxyMap = { n, ids: IDS, screen: toScreen, hover, highlight, rings: () => rings,
                       paintedMs: performance.now(), pixel: (sx, sy) => {
                         const p = new Uint8Array(4); gl.readPixels(Math.round(sx * dpr), Math.round((Hh - sy) * dpr), 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, p); return Array.from(p); } };
  document.body.dataset.painted = String(Math.round(performance.now()));
  document.body.dataset.phases = JSON.stringify(Object.fromEntries(Object.entries(phases).map(([k, v]) => [k, Math.round(v)])));
})().catch((e) => { document.getElementById("status").textContent = "The map could not be opened: " + e; });
