// Client-side splat preview (WebGL2): the view's 3D Gaussians drawn in the browser while
// the camera is dragged, so orbiting is smooth even when the server renders a few
// frames per second. An approximation of the model output: it splats the first three
// feature channels (the "RGB" ones) with plain 3DGS rules and skips the upsampler Ψ;
// the server's picture replaces it when the drag ends.
//
// Camera: the server's orbit camera (gphm.rendering.orbit_view): OpenCV look-at from
// distance d at (yaw, pitch) degrees, focal 0.35·d·size·zoom pixels, centre size/2.
"use strict";

// World -> camera [4, 4] (row-major) of the orbit camera; as gphm.geometry.look_at.
function orbitViewmat(yaw, pitch, distance) {
  const az = (yaw * Math.PI) / 180;
  const el = (pitch * Math.PI) / 180;
  const eye = [distance * Math.cos(el) * Math.sin(az), distance * Math.sin(el),
               distance * Math.cos(el) * Math.cos(az)];
  const norm = (v) => { const n = Math.hypot(...v); return v.map((x) => x / n); };
  const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2],
                           a[0] * b[1] - a[1] * b[0]];
  const z = norm(eye.map((e) => -e));
  const x = norm(cross([0, -1, 0], z));  // x = y × z with camera y along -up
  const y = cross(z, x);
  const t = [x, y, z].map((r) => -(r[0] * eye[0] + r[1] * eye[1] + r[2] * eye[2]));
  return [[...x, t[0]], [...y, t[1]], [...z, t[2]], [0, 0, 0, 1]];
}

function orbitCamera(yaw, pitch, zoom, size, distance) {
  const f = 0.35 * distance * size * zoom;
  return { viewmat: orbitViewmat(yaw, pitch, distance), fx: f, fy: f, cx: size / 2,
           cy: size / 2 };
}

const VERTEX = `#version 300 es
precision highp float;
layout(location = 0) in vec2 corner;     // quad corner in [-1, 1]^2
layout(location = 1) in vec3 mean;       // per Gaussian
layout(location = 2) in vec3 covA;       // Σ xx, xy, xz
layout(location = 3) in vec3 covB;       // Σ yy, yz, zz
layout(location = 4) in vec4 rgba;
uniform mat3 R;                          // world -> camera rotation (OpenCV)
uniform vec3 T;
uniform vec4 intr;                       // fx, fy, cx, cy in pixels
uniform vec2 viewport;                   // width, height in pixels
out vec4 vColor;
out vec2 vUV;                            // offset in units of standard deviations
void main() {
  vec3 p = R * mean + T;
  if (p.z < 0.01) { gl_Position = vec4(0.0, 0.0, 2.0, 1.0); return; }
  mat3 S = mat3(covA.x, covA.y, covA.z, covA.y, covB.x, covB.y, covA.z, covB.y, covB.z);
  mat3 Sc = R * S * transpose(R);
  float iz = 1.0 / p.z;
  // Jacobian of the projection (rows), as in 3DGS / gsplat
  vec3 j0 = vec3(intr.x * iz, 0.0, -intr.x * p.x * iz * iz);
  vec3 j1 = vec3(0.0, intr.y * iz, -intr.y * p.y * iz * iz);
  float a = dot(j0, Sc * j0) + 0.3;      // + eps2d, gsplat's screen-space blur
  float b = dot(j0, Sc * j1);
  float c = dot(j1, Sc * j1) + 0.3;
  float mid = 0.5 * (a + c);
  float rad = sqrt(max(0.25 * (a - c) * (a - c) + b * b, 0.0));
  float l1 = mid + rad, l2 = max(mid - rad, 1e-6);
  vec2 v1 = abs(b) > 1e-9 ? normalize(vec2(b, l1 - a)) : (a >= c ? vec2(1, 0) : vec2(0, 1));
  vec2 v2 = vec2(-v1.y, v1.x);
  vec2 centre = vec2(intr.x * p.x * iz + intr.z, intr.y * p.y * iz + intr.w);
  vec2 px = centre + 3.0 * (corner.x * sqrt(l1) * v1 + corner.y * sqrt(l2) * v2);
  gl_Position = vec4(px.x / viewport.x * 2.0 - 1.0, 1.0 - px.y / viewport.y * 2.0, 0.0, 1.0);
  vUV = 3.0 * corner;
  vColor = rgba;
}`;

const FRAGMENT = `#version 300 es
precision highp float;
in vec4 vColor;
in vec2 vUV;
out vec4 outColor;
void main() {
  float alpha = min(0.99, vColor.a * exp(-0.5 * dot(vUV, vUV)));
  if (alpha < 1.0 / 255.0) discard;
  outColor = vec4(vColor.rgb * alpha, alpha);  // premultiplied, drawn back to front
}`;

class SplatPreview {
  constructor(canvas) {
    this.canvas = canvas;
    const gl = canvas.getContext("webgl2", { premultipliedAlpha: true, antialias: false });
    if (!gl) throw new Error("WebGL2 unavailable");
    this.gl = gl;
    this.count = 0;
    const compile = (type, src) => {
      const s = gl.createShader(type);
      gl.shaderSource(s, src);
      gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
      return s;
    };
    const prog = gl.createProgram();
    gl.attachShader(prog, compile(gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(prog, compile(gl.FRAGMENT_SHADER, FRAGMENT));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
    this.prog = prog;
    this.uniforms = Object.fromEntries(["R", "T", "intr", "viewport"].map(
      (n) => [n, gl.getUniformLocation(prog, n)]));
    this.vao = gl.createVertexArray();
    gl.bindVertexArray(this.vao);
    const quad = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, quad);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]),
                  gl.STATIC_DRAW);
    gl.enableVertexAttribArray(0);
    gl.vertexAttribPointer(0, 2, gl.FLOAT, false, 0, 0);
    this.instances = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, this.instances);
    const stride = 16 * 4;  // mean 3, covA 3, covB 3, rgba 4, pad 3
    [[1, 3, 0], [2, 3, 3], [3, 3, 6], [4, 4, 9]].forEach(([loc, n, off]) => {
      gl.enableVertexAttribArray(loc);
      gl.vertexAttribPointer(loc, n, gl.FLOAT, false, stride, off * 4);
      gl.vertexAttribDivisor(loc, 1);
    });
  }

  // rows: Float32Array of n × 14 (mean 3, quat wxyz 4, scale 3, opacity 1, rgb 3).
  setGaussians(rows, n) {
    const data = new Float32Array(n * 16);
    for (let i = 0; i < n; i++) {
      const r = rows.subarray(14 * i, 14 * i + 14);
      const [w, x, y, z] = [r[3], r[4], r[5], r[6]];
      const Rm = [  // rotation of the unit quaternion wxyz
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)];
      const s = [r[7] * r[7], r[8] * r[8], r[9] * r[9]];
      const cov = (a, b) => Rm[3 * a] * Rm[3 * b] * s[0] + Rm[3 * a + 1] * Rm[3 * b + 1] * s[1]
        + Rm[3 * a + 2] * Rm[3 * b + 2] * s[2];  // (R diag(s²) Rᵀ)_ab
      data.set([r[0], r[1], r[2], cov(0, 0), cov(0, 1), cov(0, 2), cov(1, 1), cov(1, 2),
                cov(2, 2), r[11], r[12], r[13], r[10]], 16 * i);
    }
    this.data = data;
    this.sorted = new Float32Array(n * 16);
    this.count = n;
  }

  draw(cam) {
    const gl = this.gl;
    const { width, height } = this.canvas;
    const V = cam.viewmat;
    const n = this.count;
    // Back to front by camera depth (premultiplied "over" onto the white background):
    // a counting sort on depth quantised to 16 bits, O(n) per frame (as antimatter15's
    // splat viewer), so 100k Gaussians still sort within a frame.
    const depth = new Float32Array(n);
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = 0; i < n; i++) {
      const o = 16 * i;
      const d = V[2][0] * this.data[o] + V[2][1] * this.data[o + 1] + V[2][2] * this.data[o + 2];
      depth[i] = d;
      lo = Math.min(lo, d);
      hi = Math.max(hi, d);
    }
    const BINS = 65536;
    const scale = (BINS - 1) / Math.max(hi - lo, 1e-9);
    const bin = new Uint32Array(n);
    const counts = new Uint32Array(BINS);
    for (let i = 0; i < n; i++) {
      bin[i] = (BINS - 1) - Math.floor((depth[i] - lo) * scale);  // far first
      counts[bin[i]] += 1;
    }
    for (let k = 1; k < BINS; k++) counts[k] += counts[k - 1];
    for (let i = n - 1; i >= 0; i--) {
      const dst = --counts[bin[i]];
      this.sorted.set(this.data.subarray(16 * i, 16 * i + 16), 16 * dst);
    }
    gl.viewport(0, 0, width, height);
    gl.clearColor(1, 1, 1, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    gl.enable(gl.BLEND);
    gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
    gl.useProgram(this.prog);
    // column-major upload of the row-major rotation
    gl.uniformMatrix3fv(this.uniforms.R, false, [V[0][0], V[1][0], V[2][0], V[0][1], V[1][1],
                                                 V[2][1], V[0][2], V[1][2], V[2][2]]);
    gl.uniform3f(this.uniforms.T, V[0][3], V[1][3], V[2][3]);
    gl.uniform4f(this.uniforms.intr, cam.fx, cam.fy, cam.cx, cam.cy);
    gl.uniform2f(this.uniforms.viewport, width, height);
    gl.bindVertexArray(this.vao);
    gl.bindBuffer(gl.ARRAY_BUFFER, this.instances);
    gl.bufferData(gl.ARRAY_BUFFER, this.sorted, gl.DYNAMIC_DRAW);
    gl.drawArraysInstanced(gl.TRIANGLE_STRIP, 0, 4, n);
  }
}

window.gphmSplat = { SplatPreview, orbitCamera, orbitViewmat };
