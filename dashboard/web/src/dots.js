// Every device as a dot, drawn by a WebGL layer of our own: positions and states live in
// typed arrays indexed by the device's number, a moved device rewrites its own slot, and only
// the changed span of the buffer is uploaded before the frame is drawn. A GeoJSON source would
// re-tile all 10,000 points in its worker for every change; this costs per frame what changed,
// and the GPU draws 10,000 points in one call.
//
// The dots have a canvas of their own above the map's: a live change redraws 10,000 points and
// nothing else, where redrawing inside MapLibre would render the land, borders and every other
// layer again (without a GPU that halved the frame rate). MapLibre still calls the layer when
// the map itself renders (pan, zoom), so the dots move with the map in the same frame.
//
// Positions are stored relative to an anchor near the view, because float32 Web Mercator
// coordinates are only good to about a metre; the anchor's translation is folded into the
// matrix in float64 on the CPU.

import { MercatorCoordinate } from 'maplibre-gl';

/** States as the shader reads them: 0 online, 1 stale, 2 offline. */
const STATE_INDEX = { online: 0, stale: 1, offline: 2 };
const COLORS = ['#16a34a', '#d97706', '#6b7280'];
/** The same, as the shader's `u_colors` takes them. */
const COLORS_RGB = COLORS.flatMap(rgb);

// Without a GPU (SwiftShader, as in a VM or headless) rasterising 10,000 dots is most of a
// live redraw, and nearly all of it is per fragment: the fragment shader does as little as it
// can. The colour is chosen once per dot here, not once per pixel; the rim and the edge are
// linear ramps in squared distance (no square root, no smoothstep), which at these sizes look
// the same as smooth ones in distance and cost about a fifth less per draw.
const VERTEX = `
attribute vec2 a_pos;
attribute float a_state;
uniform mat4 u_matrix;
uniform float u_size;
uniform vec3 u_colors[3];
varying vec3 v_fill;
void main() {
  gl_Position = u_matrix * vec4(a_pos, 0.0, 1.0);
  // A device without a position yet sits far outside the clip volume.
  gl_PointSize = u_size;
  v_fill = a_state < 0.5 ? u_colors[0] : (a_state < 1.5 ? u_colors[1] : u_colors[2]);
}`;

const FRAGMENT = `
precision mediump float;
/** Squared radius where the white rim starts to fade in, and 1 / (inner² − start²): the
 * width of the fade in squared radius. */
uniform vec2 u_rim;
varying vec3 v_fill;
void main() {
  // A round dot with a white rim, antialiased over about one pixel.
  vec2 p = gl_PointCoord * 2.0 - 1.0;
  float r2 = dot(p, p);
  if (r2 > 1.0) discard;
  float rim = clamp((r2 - u_rim.x) * u_rim.y, 0.0, 1.0);
  float alpha = clamp((1.0 - r2) * ${(1 / (1 - 0.85 * 0.85)).toFixed(4)}, 0.0, 1.0);
  gl_FragColor = vec4(mix(v_fill, vec3(1.0), rim) * alpha, alpha);
}`;

export class DeviceDots {
  /** `overlay`: draw into a canvas of its own above the map (the page does); without it, into
   * the map's own (the benchmark compares). */
  constructor(id, { overlay = false } = {}) {
    this.id = id;
    this.overlay = overlay;
    this.matrix = null;
    this.type = 'custom';
    this.renderingMode = '2d';
    this.capacity = 1024;
    this.count = 0;
    /** Float64 Mercator positions (the truth) and their float32 offsets from the anchor. */
    this.mercator = new Float64Array(this.capacity * 2);
    this.offsets = new Float32Array(this.capacity * 2);
    this.states = new Float32Array(this.capacity);
    this.anchor = null;
    this.dirtyFrom = Infinity;
    this.dirtyTo = -1;
    this.grown = true;
    this.map = null;
  }

  /** Device number `num` (from 1) at `[lon, lat]` in `state`. */
  set(num, lon, lat, state) {
    const i = num - 1;
    if (i >= this.capacity) this.grow(i + 1);
    const m = MercatorCoordinate.fromLngLat([lon, lat]);
    if (!this.anchor) this.anchor = [m.x, m.y];
    this.mercator[2 * i] = m.x;
    this.mercator[2 * i + 1] = m.y;
    this.offsets[2 * i] = m.x - this.anchor[0];
    this.offsets[2 * i + 1] = m.y - this.anchor[1];
    this.states[i] = STATE_INDEX[state] ?? 2;
    if (i + 1 > this.count) {
      // Slots between the last count and this one have no position yet: out of view.
      for (let j = this.count; j < i; j++) this.offsets[2 * j] = this.offsets[2 * j + 1] = 1e6;
      this.count = i + 1;
    }
    this.dirtyFrom = Math.min(this.dirtyFrom, i);
    this.dirtyTo = Math.max(this.dirtyTo, i);
  }

  clear() {
    this.count = 0;
    this.anchor = null;
    this.grown = true;
  }

  /** Anchors the offsets at `[x, y]` (Mercator) when the view has moved far from the old one. */
  reanchor(x, y) {
    this.anchor = [x, y];
    for (let i = 0; i < this.count; i++) {
      if (this.offsets[2 * i] >= 1e6) continue;
      this.offsets[2 * i] = this.mercator[2 * i] - x;
      this.offsets[2 * i + 1] = this.mercator[2 * i + 1] - y;
    }
    this.dirtyFrom = 0;
    this.dirtyTo = this.count - 1;
  }

  grow(need) {
    let capacity = this.capacity;
    while (capacity < need) capacity *= 2;
    const grow = (old, per) => {
      const fresh = new old.constructor(capacity * per);
      fresh.set(old);
      return fresh;
    };
    this.mercator = grow(this.mercator, 2);
    this.offsets = grow(this.offsets, 2);
    this.states = grow(this.states, 1);
    this.capacity = capacity;
    this.grown = true;
  }

  /** The device numbers nearest to a screen point, within `px` pixels: for clicks. */
  pick(point, px) {
    let best = 0;
    let bestD = px * px;
    const map = this.map;
    for (let i = 0; i < this.count; i++) {
      if (this.offsets[2 * i] >= 1e6) continue;
      const lngLat = new MercatorCoordinate(this.mercator[2 * i], this.mercator[2 * i + 1]).toLngLat();
      const p = map.project(lngLat);
      const d = (p.x - point.x) ** 2 + (p.y - point.y) ** 2;
      if (d < bestD) {
        bestD = d;
        best = i + 1;
      }
    }
    return best;
  }

  /** Where device `num` was last handed to the GPU, as `[lon, lat]` (for tests and tools). */
  drawnAt(num) {
    const i = num - 1;
    if (i < 0 || i >= this.count || this.offsets[2 * i] >= 1e6) return null;
    const c = new MercatorCoordinate(this.anchor[0] + this.offsets[2 * i], this.anchor[1] + this.offsets[2 * i + 1]).toLngLat();
    return [c.lng, c.lat];
  }

  onAdd(map, mapGl) {
    this.map = map;
    let gl = mapGl;
    if (this.overlay) {
      this.canvas = document.createElement('canvas');
      this.canvas.className = 'dots-overlay';
      this.canvas.style.cssText = 'position:absolute;left:0;top:0;pointer-events:none';
      map.getCanvasContainer().appendChild(this.canvas);
      gl = this.canvas.getContext('webgl', { antialias: false, alpha: true, premultipliedAlpha: true, depth: false, stencil: false });
      this.gl = gl;
    }
    const shader = (type, source) => {
      const s = gl.createShader(type);
      gl.shaderSource(s, source);
      gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(`device dots shader: ${gl.getShaderInfoLog(s)}`);
      return s;
    };
    const program = gl.createProgram();
    gl.attachShader(program, shader(gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(program, shader(gl.FRAGMENT_SHADER, FRAGMENT));
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(`device dots program: ${gl.getProgramInfoLog(program)}`);
    this.program = program;
    this.loc = {
      pos: gl.getAttribLocation(program, 'a_pos'),
      state: gl.getAttribLocation(program, 'a_state'),
      matrix: gl.getUniformLocation(program, 'u_matrix'),
      size: gl.getUniformLocation(program, 'u_size'),
      rim: gl.getUniformLocation(program, 'u_rim'),
      colors: gl.getUniformLocation(program, 'u_colors'),
    };
    this.posBuffer = gl.createBuffer();
    this.stateBuffer = gl.createBuffer();
    this.grown = true;
  }

  onRemove(map, mapGl) {
    const gl = this.gl || mapGl;
    if (this.canvas) this.canvas.remove();
    gl.deleteBuffer(this.posBuffer);
    gl.deleteBuffer(this.stateBuffer);
    gl.deleteProgram(this.program);
  }

  upload(gl) {
    if (this.grown) {
      gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuffer);
      gl.bufferData(gl.ARRAY_BUFFER, this.offsets, gl.DYNAMIC_DRAW);
      gl.bindBuffer(gl.ARRAY_BUFFER, this.stateBuffer);
      gl.bufferData(gl.ARRAY_BUFFER, this.states, gl.DYNAMIC_DRAW);
      this.grown = false;
    } else if (this.dirtyTo >= this.dirtyFrom) {
      const from = this.dirtyFrom;
      const to = this.dirtyTo + 1;
      gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuffer);
      gl.bufferSubData(gl.ARRAY_BUFFER, from * 8, this.offsets.subarray(2 * from, 2 * to));
      gl.bindBuffer(gl.ARRAY_BUFFER, this.stateBuffer);
      gl.bufferSubData(gl.ARRAY_BUFFER, from * 4, this.states.subarray(from, to));
    }
    this.dirtyFrom = Infinity;
    this.dirtyTo = -1;
  }

  render(mapGl, args) {
    if (!this.overlay) {
      this.draw(mapGl, args.defaultProjectionData.mainMatrix);
      return;
    }
    this.matrix = Float64Array.from(args.defaultProjectionData.mainMatrix);
    this.drawNow();
  }

  /** Overlay: draws the dots as they are now over the map as last rendered. */
  drawNow() {
    const gl = this.gl;
    if (!gl || !this.matrix) return;
    const source = this.map.getCanvas();
    if (this.canvas.width !== source.width || this.canvas.height !== source.height) {
      this.canvas.width = source.width;
      this.canvas.height = source.height;
      this.canvas.style.width = source.style.width;
      this.canvas.style.height = source.style.height;
    }
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    gl.clearColor(0, 0, 0, 0);
    gl.clear(gl.COLOR_BUFFER_BIT);
    this.draw(gl, this.matrix);
  }

  draw(gl, m) {
    if (!this.count || !this.anchor) return;
    this.upload(gl);
    // mainMatrix × translate(anchor), in float64: offsets near the anchor stay exact.
    const [ax, ay] = this.anchor;
    const matrix = new Float32Array(m);
    for (let r = 0; r < 4; r++) matrix[12 + r] = m[r] * ax + m[4 + r] * ay + m[12 + r];
    const zoom = this.map.getZoom();
    // Without a GPU every fragment is CPU work, and 10,000 dots in view are a city's worth:
    // small while zoomed out, full size where devices are few per screen.
    const radius = zoom <= 2 ? 2 : zoom >= 16 ? 7 : zoom <= 12 ? 2 + ((zoom - 2) / 10) * 2 : 4 + ((zoom - 12) / 4) * 3;
    gl.useProgram(this.program);
    gl.uniformMatrix4fv(this.loc.matrix, false, matrix);
    gl.uniform1f(this.loc.size, (radius + (zoom >= 8 ? 1 : 0)) * 2 * devicePixelRatio);
    // The rim is the outer pixel of the dot, faded in over the 0.15 of the radius inside it.
    const inner = zoom >= 8 ? 1 - 1 / (radius + 1) : 1;
    const from = (inner - 0.15) ** 2;
    gl.uniform2f(this.loc.rim, from, 1 / (inner ** 2 - from));
    gl.uniform3fv(this.loc.colors, COLORS_RGB);
    gl.bindBuffer(gl.ARRAY_BUFFER, this.posBuffer);
    gl.enableVertexAttribArray(this.loc.pos);
    gl.vertexAttribPointer(this.loc.pos, 2, gl.FLOAT, false, 0, 0);
    gl.bindBuffer(gl.ARRAY_BUFFER, this.stateBuffer);
    gl.enableVertexAttribArray(this.loc.state);
    gl.vertexAttribPointer(this.loc.state, 1, gl.FLOAT, false, 0, 0);
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
    gl.drawArrays(gl.POINTS, 0, this.count);
    gl.disableVertexAttribArray(this.loc.pos);
    gl.disableVertexAttribArray(this.loc.state);
  }
}

function rgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) / 255, ((n >> 8) & 255) / 255, (n & 255) / 255];
}
