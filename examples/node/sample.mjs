// A bns-export ONNX artifact sampled from Node.js on onnxruntime-node.  The graph is the whole sampler (the
// distilled solver's loop unrolled with the network): this file only reads the artifact's manifest, checks the
// model file's sha256, feeds noise (and a condition) and writes the samples.  No solver code.
//
//   node sample.mjs ARTIFACT [-n N] [--seed S] [--input NAME=FILE.npy ...] [--npy OUT.npy] [--png OUT.png]
//
// Every graph input can be given as a .npy file (noise, labels, cond, or each named condition); noise not given
// is drawn from N(0, 1) with a seeded generator, labels not given are 0..N-1.  The output: OUT.npy (float32) and
// a PNG grid of the samples (one row, values in [-1, 1], first channel or RGB).

import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { deflateSync } from "node:zlib";
import ort from "onnxruntime-node";

const fail = (line) => {
  console.error(`error: ${line}`);
  process.exit(2);
};

function parseArgs(argv) {
  const args = { inputs: {}, n: 4, seed: 0, npy: null, png: null, artifact: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => (i + 1 < argv.length ? argv[++i] : fail(`${a} needs a value`));
    if (a === "-n") args.n = Number.parseInt(value(), 10);
    else if (a === "--seed") args.seed = Number.parseInt(value(), 10);
    else if (a === "--npy") args.npy = value();
    else if (a === "--png") args.png = value();
    else if (a === "--input") {
      const [name, file] = value().split("=");
      if (!name || !file) fail("--input takes NAME=FILE.npy");
      args.inputs[name] = file;
    } else if (!a.startsWith("-") && args.artifact === null) args.artifact = a;
    else fail(`unknown argument ${a}`);
  }
  if (args.artifact === null) fail("usage: node sample.mjs ARTIFACT [-n N] [--input NAME=FILE.npy] [--npy OUT] [--png OUT]");
  if (!(args.n >= 1)) fail("-n must be a whole number >= 1");
  return args;
}

// -- .npy (numpy's format: a magic, a Python-dict header, raw little-endian data) ---------------------------------

const NPY_TYPES = { "<f4": ["float32", Float32Array], "<i8": ["int64", BigInt64Array] };

function readNpy(file) {
  const buf = readFileSync(file);
  if (buf.toString("latin1", 0, 6) !== "\x93NUMPY") fail(`${file} is not a .npy file`);
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.toString("latin1", start, start + headerLen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const shape = (/'shape':\s*\(([^)]*)\)/.exec(header)?.[1] ?? "").split(",").filter((s) => s.trim()).map(Number);
  if (/'fortran_order':\s*True/.test(header)) fail(`${file} is Fortran-ordered; save it C-ordered`);
  if (!(descr in NPY_TYPES)) fail(`${file} holds ${descr}; give float32 (<f4) or int64 (<i8)`);
  const [dtype, Type] = NPY_TYPES[descr];
  const data = buf.subarray(start + headerLen);
  const count = shape.reduce((a, b) => a * b, 1);
  const array = new Type(data.buffer.slice(data.byteOffset, data.byteOffset + count * Type.BYTES_PER_ELEMENT));
  return { dtype, shape, data: array };
}

function writeNpy(file, shape, data) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  header += " ".repeat(63 - ((header.length + 10) % 64)) + "\n";
  const pre = Buffer.alloc(10);
  pre.write("\x93NUMPY", 0, "latin1");
  pre[6] = 1;
  pre[7] = 0;
  pre.writeUInt16LE(header.length, 8);
  writeFileSync(file, Buffer.concat([pre, Buffer.from(header, "latin1"), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

// -- noise: a seeded N(0, 1) (mulberry32 and Box-Muller; any generator will do, the graph takes the noise) --------

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

// -- PNG: a row of samples, 8-bit grey or RGB, written with node:zlib ---------------------------------------------

const CRC = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function chunk(type, body) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(body.length);
  const tb = Buffer.concat([Buffer.from(type, "latin1"), body]);
  let c = 0xffffffff;
  for (const byte of tb) c = CRC[(c ^ byte) & 0xff] ^ (c >>> 8);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE((c ^ 0xffffffff) >>> 0);
  return Buffer.concat([len, tb, crc]);
}

function writePng(file, shape, data) {
  const [b, c, h, w] = shape.length === 4 ? shape : [shape[0], 1, shape[1], shape.slice(2).reduce((a, x) => a * x, 1)];
  const rgb = c === 3;
  const width = b * w + (b - 1);
  const rows = [];
  for (let y = 0; y < h; y++) {
    const row = Buffer.alloc(1 + width * (rgb ? 3 : 1));
    for (let i = 0; i < b; i++) {
      for (let x = 0; x < w; x++) {
        for (let ch = 0; ch < (rgb ? 3 : 1); ch++) {
          const v = data[((i * c + ch) * h + y) * w + x];
          const byte = Math.round(Math.min(1, Math.max(-1, v)) * 127.5 + 127.5);
          row[1 + ((i * (w + 1) + x) * (rgb ? 3 : 1)) + ch] = byte;
        }
      }
    }
    rows.push(row);
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8;
  ihdr[9] = rgb ? 2 : 0;
  const sig = Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]);
  writeFileSync(file, Buffer.concat([sig, chunk("IHDR", ihdr), chunk("IDAT", deflateSync(Buffer.concat(rows))), chunk("IEND", Buffer.alloc(0))]));
}

// -- the artifact ---------------------------------------------------------------------------------------------------

const args = parseArgs(process.argv.slice(2));
let manifest;
try {
  manifest = JSON.parse(readFileSync(join(args.artifact, "manifest.json"), "utf8"));
} catch (e) {
  fail(`${args.artifact} is not a bns-export artifact (${e.message.split("\n")[0]})`);
}
if (manifest.schema !== "bns-export/artifact" || manifest.format !== "onnx") fail(`${args.artifact}: an ONNX bns-export artifact is needed`);
const modelPath = join(args.artifact, manifest.model_file);
const digest = createHash("sha256").update(readFileSync(modelPath)).digest("hex");
if (digest !== manifest.files[manifest.model_file]) fail(`${manifest.model_file} does not match its manifest's sha256`);

const given = Object.fromEntries(Object.entries(args.inputs).map(([name, file]) => [name, readNpy(file)]));
const batch = given.noise ? given.noise.shape[0] : args.n;
if (batch > manifest.max_batch) fail(`batch ${batch} is outside 1..${manifest.max_batch}`);
const feeds = {};
for (const spec of manifest.inputs) {
  const dims = [batch, ...spec.shape.slice(1)];
  if (dims.some((d) => typeof d !== "number")) fail(`${spec.name} has open sizes: give it with --input`);
  let t = given[spec.name];
  if (t === undefined) {
    const count = dims.reduce((a, b) => a * b, 1);
    if (spec.name === "noise") t = { dtype: "float32", shape: dims, data: gaussian(count, args.seed) };
    else if (spec.name === "labels") t = { dtype: "int64", shape: dims, data: BigInt64Array.from({ length: batch }, (_, i) => BigInt(i)) };
    else fail(`give ${spec.name} (${spec.dtype}, shape ${JSON.stringify(dims)}) with --input ${spec.name}=FILE.npy`);
  }
  if (t.dtype !== spec.dtype || JSON.stringify(t.shape) !== JSON.stringify(dims)) {
    fail(`${spec.name} is ${t.dtype} ${JSON.stringify(t.shape)}; the graph takes ${spec.dtype} ${JSON.stringify(dims)}`);
  }
  feeds[spec.name] = new ort.Tensor(spec.dtype, t.data, t.shape);
}
const session = await ort.InferenceSession.create(modelPath);
const output = manifest.outputs[manifest.outputs.length - 1].name; // the image with a decoder, else the sample
const result = (await session.run(feeds))[output];
if (args.npy) writeNpy(args.npy, result.dims, result.data);
if (args.png) writePng(args.png, result.dims, result.data);
console.log(`${output}: ${JSON.stringify(result.dims)} from ${manifest.nfe} NFE (${manifest.solver_name})`);
