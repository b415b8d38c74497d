// A bns-export ONNX artifact sampled in the browser on onnxruntime-web.  The graph is the whole sampler: this file
// reads the artifact's manifest, checks the model file's sha256, feeds noise (and a condition) and draws the samples
// on the page's canvas, one row, values in [-1, 1] as 0..255 (first channel, or RGB).  No solver code.
//
// When it is done, window.bnsDone is true and window.bnsResult holds {output, dims} or {error} (what a test reads).

const params = new URLSearchParams(location.search);
const base = (params.get("artifact") ?? "artifact/").replace(/\/?$/, "/");
// an absolute URL: onnxruntime-web imports its WebAssembly loader from there, and a bare relative path is no module URL
const ortBase = new URL((params.get("ort") ?? "node_modules/onnxruntime-web/dist/").replace(/\/?$/, "/"), location.href).href;
const status = document.getElementById("status");

class Refusal extends Error {}

const fail = (line) => {
  throw new Refusal(line);
};

async function fetchOk(url, what) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    fail(`cannot fetch ${what} (${e.message})`);
  }
  if (!response.ok) fail(`cannot fetch ${what}: HTTP ${response.status}`);
  return response;
}

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = src;
    s.onload = resolve;
    s.onerror = () => reject(new Refusal(`cannot load onnxruntime-web from ${src}`));
    document.head.appendChild(s);
  });
}

// a seeded N(0, 1) (mulberry32 and Box-Muller; any generator will do, the graph takes the noise)
function gaussian(count, seed) {
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - uniform()));
    const th = 2 * Math.PI * uniform();
    out[i] = r * Math.cos(th);
    if (i + 1 < count) out[i + 1] = r * Math.sin(th);
  }
  return out;
}

const TYPED = { float32: Float32Array, int64: BigInt64Array };

function tensorOf(name, given) {
  const Type = TYPED[given.dtype];
  if (!Type || !Array.isArray(given.shape) || !Array.isArray(given.data)) fail(`input ${name} needs {dtype, shape, data}`);
  const data = given.dtype === "int64" ? Type.from(given.data, (v) => BigInt(v)) : Type.from(given.data);
  return { dtype: given.dtype, shape: given.shape, data };
}

function draw(dims, data) {
  const [b, c, h, w] = dims.length === 4 ? dims : [dims[0], 1, dims[1], dims.slice(2).reduce((a, x) => a * x, 1)];
  const rgb = c === 3;
  const canvas = document.getElementById("samples");
  canvas.width = b * w + (b - 1);
  canvas.height = h;
  canvas.style.setProperty("--w", canvas.width);
  canvas.style.setProperty("--h", canvas.height);
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(canvas.width, canvas.height);
  image.data.fill(255);
  const byte = (v) => Math.round(Math.min(1, Math.max(-1, v)) * 127.5 + 127.5);
  for (let i = 0; i < b; i++) {
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const at = (y * canvas.width + i * (w + 1) + x) * 4;
        for (let ch = 0; ch < 3; ch++) image.data[at + ch] = byte(data[((i * c + (rgb ? ch : 0)) * h + y) * w + x]);
      }
    }
  }
  ctx.putImageData(image, 0, 0);
}

async function main() {
  let manifest;
  try {
    manifest = await (await fetchOk(`${base}manifest.json`, "the manifest")).json();
  } catch (e) {
    if (e instanceof Refusal) throw e;
    fail(`${base} is not a bns-export artifact (${e.message})`);
  }
  if (manifest.schema !== "bns-export/artifact" || manifest.format !== "onnx") fail(`${base}: an ONNX bns-export artifact is needed`);
  const model = await (await fetchOk(`${base}${manifest.model_file}`, manifest.model_file)).arrayBuffer();
  const digest = Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", model)), (x) => x.toString(16).padStart(2, "0")).join("");
  if (digest !== manifest.files[manifest.model_file]) fail(`${manifest.model_file} does not match its manifest's sha256`);

  const given = params.get("inputs") ? await (await fetchOk(params.get("inputs"), "the inputs")).json() : {};
  const batch = given.noise ? given.noise.shape[0] : Number.parseInt(params.get("n") ?? "4", 10);
  if (!(batch >= 1 && batch <= manifest.max_batch)) fail(`batch ${batch} is outside 1..${manifest.max_batch}`);
  const seed = Number.parseInt(params.get("seed") ?? "0", 10);

  await loadScript(`${ortBase}ort.wasm.min.js`);
  const ort = window.ort;
  ort.env.wasm.wasmPaths = ortBase;
  ort.env.wasm.numThreads = 1; // threads need a cross-origin-isolated page; one is enough for a small graph
  const feeds = {};
  for (const spec of manifest.inputs) {
    const dims = [batch, ...spec.shape.slice(1)];
    if (dims.some((d) => typeof d !== "number")) fail(`${spec.name} has open sizes: give it in the inputs`);
    let t = given[spec.name] && tensorOf(spec.name, given[spec.name]);
    if (t === undefined) {
      const count = dims.reduce((a, x) => a * x, 1);
      if (spec.name === "noise") t = { dtype: "float32", shape: dims, data: gaussian(count, seed) };
      else if (spec.name === "labels") t = { dtype: "int64", shape: dims, data: BigInt64Array.from({ length: batch }, (_, i) => BigInt(i)) };
      else fail(`give ${spec.name} (${spec.dtype}, shape ${JSON.stringify(dims)}) in the inputs`);
    }
    if (t.dtype !== spec.dtype || JSON.stringify(t.shape) !== JSON.stringify(dims)) {
      fail(`${spec.name} is ${t.dtype} ${JSON.stringify(t.shape)}; the graph takes ${spec.dtype} ${JSON.stringify(dims)}`);
    }
    feeds[spec.name] = new ort.Tensor(spec.dtype, t.data, t.shape);
  }
  const session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"] });
  const output = manifest.outputs[manifest.outputs.length - 1].name; // the image with a decoder, else the sample
  const result = (await session.run(feeds))[output];
  draw(result.dims, result.data);
  status.textContent = `${output}: ${JSON.stringify(result.dims)} from ${manifest.nfe} NFE (${manifest.solver_name})`;
  return { output, dims: result.dims };
}

main()
  .then((result) => {
    window.bnsResult = result;
  })
  .catch((e) => {
    const line = e instanceof Refusal ? e.message : `unexpected ${e.name}: ${e.message}`;
    status.textContent = `error: ${line}`;
    status.className = "error";
    window.bnsResult = { error: line };
  })
  .finally(() => {
    window.bnsDone = true;
  });
