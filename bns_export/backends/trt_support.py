"""Can TensorRT's ONNX parser take this graph?  Checked without TensorRT, from its support matrix.

The table is onnx-tensorrt's docs/operators.md (TensorRT 8.4 through 10.x: operators marked
supported), plus operators that 8.5-10.x added.  An op not listed is reported, not assumed.
"""

from __future__ import annotations

from .onnx_walk import all_initializers, all_nodes

SUPPORTED_OPS = frozenset(
    """
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil Celu
Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish Hardmax
Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul
Neg NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu
Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split()
)

# ONNX TensorProto element types TensorRT 10 takes (DOUBLE only by casting down, so reported)
SUPPORTED_DTYPES = {1: "FLOAT", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FLOAT16", 16: "BFLOAT16"}


def check_tensorrt_support(model) -> dict:
    """Ops and tensor dtypes of an onnx.ModelProto (subgraphs included) that TensorRT's ONNX parser would not
    take."""
    nodes = list(all_nodes(model.graph))
    ops = sorted({n.op_type for n in nodes if n.domain in ("", "ai.onnx")})
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in nodes if n.domain not in ("", "ai.onnx")})
    bad_ops = [op for op in ops if op not in SUPPORTED_OPS] + foreign
    dtypes = set()
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        dtypes.add(vi.type.tensor_type.elem_type)
    dtypes.update(t.data_type for t in all_initializers(model.graph))
    for n in nodes:
        for a in n.attribute:
            if a.name == "to" and n.op_type == "Cast":
                dtypes.add(a.i)
    dtypes.discard(0)
    import onnx

    bad_dtypes = [onnx.TensorProto.DataType.Name(d) for d in sorted(dtypes) if d not in SUPPORTED_DTYPES]
    return {
        "ops": ops,
        "unsupported_ops": bad_ops,
        "unsupported_dtypes": bad_dtypes,
        "ok": not bad_ops and not bad_dtypes,
    }
