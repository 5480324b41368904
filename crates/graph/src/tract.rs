//! ONNX graphs on tract: loading, interface discovery, and checked runs.

use std::sync::Arc;

use tract_onnx::prelude::tract_ndarray::{ArrayD, IxDyn};
use tract_onnx::prelude::{
    Datum, DatumType, Framework, InferenceModel, InferenceModelExt, IntoTensor, TValue, TVec,
    TractResult, TypedFact, TypedModel, TypedRunnableModel, f16,
};

use crate::{DType, Dim, Error, Limits, Spec, Tensor};

/// An ONNX graph, optimised and ready to run.
pub struct Graph {
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<Spec>,
    outputs: Vec<Spec>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

/// tract's pipeline from a parsed ONNX model to the optimised one, with moxnet's rewrites.
///
/// [`crate::rewrite::gather_first`] runs twice. First on the model as `into_typed` leaves it:
/// tract's constant propagation evaluates every operation whose inputs are all constant and
/// only then drops a result over its memory budget, in each pass, so until the rewrite a
/// dequantized embedding table is cast and scaled whole over and over while the graph loads
/// (the demo model: about a third of its load time). Then after declutter, which can bring a
/// chain into a form that only then qualifies.
pub(crate) fn optimise(model: InferenceModel) -> TractResult<TypedModel> {
    let mut typed = model.into_typed()?;
    crate::rewrite::gather_first(&mut typed)?;
    let mut typed = typed.into_decluttered()?;
    crate::rewrite::gather_first(&mut typed)?;
    typed.into_optimized()
}

impl Graph {
    /// Parses and optimises an ONNX model. Input and output types must be fully declared in
    /// the model (dims may be symbolic).
    pub fn load(onnx: &[u8]) -> Result<Graph, Error> {
        let load = |e: tract_onnx::prelude::TractError| Error::Load(format!("{e:#}"));
        let model = tract_onnx::onnx()
            .model_for_read(&mut &onnx[..])
            .map_err(load)?;
        let typed = optimise(model).map_err(load)?;
        let mut inputs = Vec::new();
        for (i, outlet) in typed.input_outlets().map_err(load)?.iter().enumerate() {
            let name = typed.node(outlet.node).name.clone();
            inputs.push(spec(name, typed.input_fact(i).map_err(load)?)?);
        }
        let mut outputs = Vec::new();
        for (i, outlet) in typed.output_outlets().map_err(load)?.iter().enumerate() {
            let name = typed
                .outlet_label(*outlet)
                .map(str::to_string)
                .unwrap_or_else(|| typed.node(outlet.node).name.clone());
            outputs.push(spec(name, typed.output_fact(i).map_err(load)?)?);
        }
        let plan = tract_onnx::tract_core::internal::SimplePlan::new(typed).map_err(load)?;
        Ok(Graph {
            plan,
            inputs,
            outputs,
        })
    }

    /// The graph's inputs, in graph order.
    pub fn inputs(&self) -> &[Spec] {
        &self.inputs
    }

    /// The graph's outputs, in graph order.
    pub fn outputs(&self) -> &[Spec] {
        &self.outputs
    }

    /// Runs the graph. Inputs are matched by name (each graph input exactly once) and checked
    /// against `limits` and the graph's specs before tract sees them; outputs come in graph order.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Error> {
        self.run_with(inputs, &Limits::default())
    }

    /// [`Graph::run`] with explicit limits on each input.
    pub fn run_with(&self, inputs: Vec<Tensor>, limits: &Limits) -> Result<Vec<Tensor>, Error> {
        let mut values: TVec<TValue> = TVec::new();
        for tensor in crate::match_inputs(&self.inputs, inputs, limits)? {
            values.push(to_tract(&tensor)?.into());
        }
        let outputs = self
            .plan
            .run(values)
            .map_err(|e| Error::Run(format!("{e:#}")))?;
        outputs
            .into_iter()
            .zip(&self.outputs)
            .map(|(value, spec)| from_tract(&spec.name, &value.into_tensor()))
            .collect()
    }
}

fn spec(name: String, fact: &TypedFact) -> Result<Spec, Error> {
    let dtype = dtype_of(fact.datum_type).ok_or_else(|| {
        Error::Load(format!(
            "{name:?} has element type {:?}, which moxnet does not carry",
            fact.datum_type
        ))
    })?;
    let shape = fact
        .shape
        .iter()
        .map(|d| match d.to_i64() {
            Ok(n) if n >= 0 => Dim::Fixed(n as u64),
            _ => Dim::Symbolic(d.to_string()),
        })
        .collect();
    Ok(Spec { name, dtype, shape })
}

fn dtype_of(dt: DatumType) -> Option<DType> {
    Some(match dt {
        DatumType::Bool => DType::Bool,
        DatumType::U8 => DType::U8,
        DatumType::U16 => DType::U16,
        DatumType::U32 => DType::U32,
        DatumType::U64 => DType::U64,
        DatumType::I8 => DType::I8,
        DatumType::I16 => DType::I16,
        DatumType::I32 => DType::I32,
        DatumType::I64 => DType::I64,
        DatumType::F16 => DType::F16,
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::String => DType::Bytes,
        _ => return None,
    })
}

fn array<T: Datum, const N: usize>(
    t: &Tensor,
    f: fn([u8; N]) -> T,
) -> Result<tract_onnx::prelude::Tensor, Error> {
    let values: Vec<T> = t
        .data
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect();
    shaped(t, values)
}

fn shaped<T: Datum>(t: &Tensor, values: Vec<T>) -> Result<tract_onnx::prelude::Tensor, Error> {
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    ArrayD::from_shape_vec(IxDyn(&shape), values)
        .map(IntoTensor::into_tensor)
        .map_err(|e| Error::Invalid(format!("tensor {:?}: {e}", t.name)))
}

/// Converts a checked tensor to tract's representation.
fn to_tract(t: &Tensor) -> Result<tract_onnx::prelude::Tensor, Error> {
    match t.dtype {
        DType::Bool => array::<bool, 1>(t, |[b]| b != 0),
        DType::U8 => array(t, u8::from_le_bytes),
        DType::U16 => array(t, u16::from_le_bytes),
        DType::U32 => array(t, u32::from_le_bytes),
        DType::U64 => array(t, u64::from_le_bytes),
        DType::I8 => array(t, i8::from_le_bytes),
        DType::I16 => array(t, i16::from_le_bytes),
        DType::I32 => array(t, i32::from_le_bytes),
        DType::I64 => array(t, i64::from_le_bytes),
        DType::F16 => array(t, |b| f16::from_bits(u16::from_le_bytes(b))),
        DType::F32 => array(t, f32::from_le_bytes),
        DType::F64 => array(t, f64::from_le_bytes),
        DType::Bytes => {
            let values = t
                .byte_elements()?
                .into_iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
            shaped(t, values)
        }
    }
}

fn encode<T: Datum, const N: usize>(
    t: &tract_onnx::prelude::Tensor,
    f: fn(&T) -> [u8; N],
) -> Result<Vec<u8>, Error> {
    let view = t
        .to_plain_array_view::<T>()
        .map_err(|e| Error::Run(format!("{e:#}")))?;
    let mut out = Vec::with_capacity(view.len() * N);
    for v in view.iter() {
        out.extend_from_slice(&f(v));
    }
    Ok(out)
}

/// Converts one of tract's output tensors to the shared encoding.
fn from_tract(name: &str, t: &tract_onnx::prelude::Tensor) -> Result<Tensor, Error> {
    let dtype = dtype_of(t.datum_type()).ok_or_else(|| {
        Error::Run(format!(
            "output {name:?} has element type {:?}, which moxnet does not carry",
            t.datum_type()
        ))
    })?;
    let data = match dtype {
        DType::Bool => encode::<bool, 1>(t, |b| [*b as u8])?,
        DType::U8 => encode(t, |v: &u8| v.to_le_bytes())?,
        DType::U16 => encode(t, |v: &u16| v.to_le_bytes())?,
        DType::U32 => encode(t, |v: &u32| v.to_le_bytes())?,
        DType::U64 => encode(t, |v: &u64| v.to_le_bytes())?,
        DType::I8 => encode(t, |v: &i8| v.to_le_bytes())?,
        DType::I16 => encode(t, |v: &i16| v.to_le_bytes())?,
        DType::I32 => encode(t, |v: &i32| v.to_le_bytes())?,
        DType::I64 => encode(t, |v: &i64| v.to_le_bytes())?,
        DType::F16 => encode(t, |v: &f16| v.to_bits().to_le_bytes())?,
        DType::F32 => encode(t, |v: &f32| v.to_le_bytes())?,
        DType::F64 => encode(t, |v: &f64| v.to_le_bytes())?,
        DType::Bytes => {
            let view = t
                .to_plain_array_view::<String>()
                .map_err(|e| Error::Run(format!("{e:#}")))?;
            let values: Vec<&[u8]> = view.iter().map(|s| s.as_bytes()).collect();
            return Ok(Tensor::from_bytes(
                name,
                t.shape().iter().map(|&d| d as u64).collect(),
                &values,
            ));
        }
    };
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape: t.shape().iter().map(|&d| d as u64).collect(),
        data,
    })
}

#[cfg(test)]
mod tests {
    use tract_onnx::prelude::*;

    use crate::rewrite::tests::{assert_same_bits, largest_f32, run_optimised};

    /// `quantized_lookup`'s graph as an ONNX file would hold it: `Gather(Mul(Cast(table_q),
    /// scale), ids)` with a per-row scale and a symbolic batch of ids.
    fn quantized_lookup_onnx() -> tract_onnx::pb::ModelProto {
        use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
        use tract_onnx::pb::type_proto::{Tensor as TensorType, Value};
        use tract_onnx::pb::{
            AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
            TensorShapeProto, TypeProto, ValueInfoProto,
        };
        let (rows, cols) = (2048usize, 640usize);
        let value = |name: &str, elem_type: i32, dims: Vec<dimension::Value>| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(Value::TensorType(TensorType {
                    elem_type,
                    shape: Some(TensorShapeProto {
                        dim: dims
                            .into_iter()
                            .map(|d| Dimension {
                                value: Some(d),
                                ..Dimension::default()
                            })
                            .collect(),
                    }),
                })),
                ..TypeProto::default()
            }),
            ..ValueInfoProto::default()
        };
        let node = |op: &str, inputs: &[&str], output: &str| NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|i| i.to_string()).collect(),
            output: vec![output.into()],
            ..NodeProto::default()
        };
        let (int8, float, int64) = (3, 1, 7);
        let table = TensorProto {
            name: "table_q".into(),
            dims: vec![rows as i64, cols as i64],
            data_type: int8,
            raw_data: (0..rows * cols).map(|i| ((i * 7919) % 251) as u8).collect(),
            ..TensorProto::default()
        };
        let scale = TensorProto {
            name: "scale".into(),
            dims: vec![rows as i64, 1],
            data_type: float,
            float_data: (0..rows).map(|i| 0.001 + i as f32 * 1e-5).collect(),
            ..TensorProto::default()
        };
        let mut cast = node("Cast", &["table_q"], "cast");
        cast.attribute.push(AttributeProto {
            name: "to".into(),
            r#type: 2, // INT
            i: float.into(),
            ..AttributeProto::default()
        });
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                name: "lookup".into(),
                node: vec![
                    cast,
                    node("Mul", &["cast", "scale"], "mul"),
                    node("Gather", &["mul", "ids"], "out"),
                ],
                initializer: vec![table, scale],
                input: vec![value(
                    "ids",
                    int64,
                    vec![
                        dimension::Value::DimParam("batch".into()),
                        dimension::Value::DimValue(3),
                    ],
                )],
                output: vec![value("out", float, vec![])],
                ..GraphProto::default()
            }),
            ..ModelProto::default()
        }
    }

    #[test]
    fn the_rewrite_applies_before_declutter_as_onnx_graphs_arrive() {
        let parsed = || {
            tract_onnx::onnx()
                .model_for_proto_model(&quantized_lookup_onnx())
                .expect("parse")
        };
        // As `into_typed` leaves it, before declutter's constant propagation gets to evaluate
        // (and then drop) the whole cast table.
        let mut typed = parsed().into_typed().expect("typed");
        assert_eq!(
            crate::rewrite::gather_first(&mut typed).expect("rewrite"),
            1
        );
        let optimised = super::optimise(parsed()).expect("optimise");
        assert!(
            largest_f32(&optimised) <= 6 * 640,
            "only the gathered rows are cast and scaled"
        );
        let tract_alone = parsed()
            .into_typed()
            .and_then(|m| m.into_optimized())
            .expect("optimise");
        assert_same_bits(
            &run_optimised(tract_alone),
            &run_optimised(optimised),
            "ONNX",
        );
    }
}
