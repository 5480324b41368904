//! Graph rewrites moxnet applies to tract's typed model before code generation (see
//! `tract::optimise` for where they run).
//!
//! [`gather_first`]: a model quantized weight-only stores a table as int8 and dequantizes it in
//! the graph, `Gather(Mul(Cast(table_q), scale), ids)`. tract folds constants only while the
//! result stays within a small memory budget, so a large table (all-MiniLM-L6-v2's 30,522 × 384
//! word embeddings: 47 MB as `f32`) is cast and scaled whole on every call, to read 16 rows.
//! Element-wise operations commute with a gather, so the rewrite gathers the rows from each
//! constant first and runs the element-wise chain on those rows only:
//! `Mul(Cast(Gather(table_q, ids)), Gather(scale, ids))`. Every output element is computed by
//! the same operations on the same values as before, so results are bit for bit the same.

use tract_onnx::prelude::{OutletId, TVec, TractResult, TypedModel};
use tract_onnx::tract_core::internal::TypedModelPatch;
use tract_onnx::tract_core::ops::array::Gather;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;

/// The longest element-wise chain [`gather_first`] follows back from a gather.
const MAX_CHAIN: usize = 16;

/// The most gathers [`gather_first`] moves in one graph (each move rescans the graph, so this
/// keeps a crafted graph's load time linear in its size; real models have a few embedding
/// tables).
const MAX_MOVES: usize = 256;

/// Moves each gather that reads an element-wise function of constants (which tract left
/// unfolded) in front of that function. Returns how many gathers moved.
pub(crate) fn gather_first(model: &mut TypedModel) -> TractResult<usize> {
    let mut moved = 0;
    // Each rewrite changes node ids; start over until no gather qualifies. Every rewrite
    // removes one qualifying gather (the new ones read constants), so this ends.
    while moved < MAX_MOVES
        && let Some((id, gather, rows)) = next_candidate(model)?
    {
        let node = model.node(id);
        let data = node.inputs[0];
        let mut patch = TypedModelPatch::default();
        let indices = patch.tap_model(model, node.inputs[1])?;
        let indices_rank = model.outlet_fact(node.inputs[1])?.rank();
        let Some(out) = rebuild(
            model,
            &mut patch,
            data,
            &Rebuild {
                gather: &gather,
                rows,
                indices,
                indices_rank,
            },
        )?
        else {
            break;
        };
        patch.shunt_outside(model, id.into(), out)?;
        patch.apply(model)?;
        model.compact()?;
        moved += 1;
    }
    Ok(moved)
}

/// The first gather whose data is an unfolded element-wise chain over constants, used by that
/// gather alone (else the whole table is computed anyway): its id, the op, and the table's size
/// along the gathered axis.
fn next_candidate(model: &TypedModel) -> TractResult<Option<(usize, Gather, i64)>> {
    for node in model.nodes() {
        let Some(gather) = node.op_as::<Gather>() else {
            continue;
        };
        let data = node.inputs[0];
        let fact = model.outlet_fact(data)?;
        if gather.output_type.is_some() || fact.konst.is_some() || fact.rank() <= gather.axis {
            continue;
        }
        let Ok(rows) = fact.shape[gather.axis].to_i64() else {
            continue;
        };
        if qualifies(model, data, gather.axis, rows, 0)? {
            return Ok(Some((node.id, gather.clone(), rows)));
        }
    }
    Ok(None)
}

/// Whether `outlet` is an element-wise chain (cast, unary, binary) whose leaves are constants,
/// each intermediate value used only by the next step, all of the same rank, each constant
/// either the table's size along `axis` (`rows`) or 1 there (broadcast).
fn qualifies(
    model: &TypedModel,
    outlet: OutletId,
    axis: usize,
    rows: i64,
    depth: usize,
) -> TractResult<bool> {
    let fact = model.outlet_fact(outlet)?;
    if fact.rank() <= axis {
        return Ok(false);
    }
    if fact.konst.is_some() {
        return Ok(depth > 0 && matches!(fact.shape[axis].to_i64(), Ok(n) if n == rows || n == 1));
    }
    if depth >= MAX_CHAIN {
        return Ok(false);
    }
    let node = model.node(outlet.node);
    if node.outputs.len() != 1 || node.outputs[0].successors.len() != 1 {
        return Ok(false);
    }
    let elementwise = node.op_is::<Cast>() || node.op_is::<ElementWiseOp>();
    let binary = node.op_is::<TypedBinOp>();
    if !(elementwise && node.inputs.len() == 1 || binary && node.inputs.len() == 2) {
        return Ok(false);
    }
    for input in &node.inputs {
        if model.outlet_fact(*input)?.rank() != fact.rank()
            || !qualifies(model, *input, axis, rows, depth + 1)?
        {
            return Ok(false);
        }
    }
    Ok(true)
}

struct Rebuild<'a> {
    gather: &'a Gather,
    /// The size of the gathered axis in the full table.
    rows: i64,
    indices: OutletId,
    indices_rank: usize,
}

/// Wires into `patch` the chain that computes `outlet` on the gathered rows only.
fn rebuild(
    model: &TypedModel,
    patch: &mut TypedModelPatch,
    outlet: OutletId,
    at: &Rebuild,
) -> TractResult<Option<OutletId>> {
    let node = model.node(outlet.node);
    let fact = model.outlet_fact(outlet)?;
    let axis = at.gather.axis;
    if fact.konst.is_some() {
        let tap = patch.tap_model(model, outlet)?;
        let size = fact.shape[axis].to_i64()?;
        if size == at.rows {
            let wire = patch.wire_node(
                format!("{}.gathered", node.name),
                at.gather.clone(),
                &[tap, at.indices],
            )?;
            return Ok(Some(wire[0]));
        }
        if size != 1 {
            return Ok(None);
        }
        // Broadcast along the gathered axis: it becomes the indices' axes, each of size 1.
        let mut wire = patch.wire_node(
            format!("{}.gathered.rm", node.name),
            AxisOp::Rm(axis),
            &[tap],
        )?;
        for i in 0..at.indices_rank {
            wire = patch.wire_node(
                format!("{}.gathered.add{i}", node.name),
                AxisOp::Add(axis),
                &wire,
            )?;
        }
        return Ok(Some(wire[0]));
    }
    let mut inputs: TVec<OutletId> = TVec::new();
    for input in &node.inputs {
        match rebuild(model, patch, *input, at)? {
            Some(wire) => inputs.push(wire),
            None => return Ok(None),
        }
    }
    let wire = patch.wire_node(format!("{}.gathered", node.name), node.op.clone(), &inputs)?;
    Ok(Some(wire[0]))
}

#[cfg(test)]
pub(crate) mod tests {
    use tract_onnx::prelude::*;
    use tract_onnx::tract_core::internal::SimplePlan;
    use tract_onnx::tract_core::ops::array::Gather;
    use tract_onnx::tract_core::ops::cast::Cast;
    use tract_onnx::tract_core::ops::math;

    /// `Gather(Mul(Cast(table_q), scale), ids)` with a table too large for tract to fold
    /// (2,048 × 640 int8: 5 MiB as f32), `scale` of shape `scale_shape`.
    fn quantized_lookup(scale_shape: [usize; 2]) -> TypedModel {
        let (rows, cols) = (2048usize, 640usize);
        let mut model = TypedModel::default();
        let ids = model.add_source("ids", i64::fact([2, 3])).expect("source");
        let values: Vec<i8> = (0..rows * cols).map(|i| ((i * 7919) % 251) as i8).collect();
        let table = model
            .add_const(
                "table_q",
                Tensor::from_shape(&[rows, cols], &values).expect("table"),
            )
            .expect("const");
        let scales: Vec<f32> = (0..scale_shape[0] * scale_shape[1])
            .map(|i| 0.001 + i as f32 * 1e-5)
            .collect();
        let scale = model
            .add_const(
                "scale",
                Tensor::from_shape(&scale_shape, &scales).expect("scale"),
            )
            .expect("const");
        let cast = model
            .wire_node(
                "cast",
                Cast {
                    to: f32::datum_type(),
                },
                &[table],
            )
            .expect("cast");
        let mul = model
            .wire_node("mul", math::mul(), &[cast[0], scale])
            .expect("mul");
        let out = model
            .wire_node("gather", Gather::new(0), &[mul[0], ids])
            .expect("gather");
        model.select_output_outlets(&out).expect("outputs");
        model
    }

    fn run(model: TypedModel) -> Tensor {
        run_optimised(model.into_optimized().expect("optimise"))
    }

    pub(crate) fn run_optimised(model: TypedModel) -> Tensor {
        let plan = SimplePlan::new(model).expect("plan");
        let ids = Tensor::from_shape(&[2, 3], &[0i64, 2047, -1, 5, 5, 1000]).expect("ids");
        let mut out = plan.run(tvec!(ids.into())).expect("run");
        out.remove(0).into_tensor()
    }

    /// Both f32 lookups have the expected shape and the same bits.
    pub(crate) fn assert_same_bits(before: &Tensor, after: &Tensor, what: &str) {
        assert_eq!(after.shape(), &[2, 3, 640], "{what}");
        let (a, b) = (
            before.to_plain_array_view::<f32>().expect("f32"),
            after.to_plain_array_view::<f32>().expect("f32"),
        );
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "bit for bit ({what})"
        );
    }

    /// The largest f32 value the optimised model computes (constants aside), in elements.
    pub(crate) fn largest_f32(model: &TypedModel) -> usize {
        let optimised = model.clone().into_optimized().expect("optimise");
        optimised
            .nodes()
            .iter()
            .flat_map(|n| &n.outputs)
            .filter(|o| o.fact.datum_type == f32::datum_type() && o.fact.konst.is_none())
            .filter_map(|o| o.fact.shape.as_concrete().map(|s| s.iter().product()))
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn a_gather_from_a_dequantized_table_reads_only_its_rows_and_gives_the_same_bits() {
        for scale_shape in [[2048, 1], [1, 1], [1, 640], [2048, 640]] {
            let model = quantized_lookup(scale_shape);
            assert_eq!(
                largest_f32(&model),
                2048 * 640,
                "tract alone casts the whole table ({scale_shape:?})"
            );
            let before = run(model.clone());
            let mut rewritten = model;
            assert_eq!(super::gather_first(&mut rewritten).expect("rewrite"), 1);
            assert!(
                largest_f32(&rewritten) <= 6 * 640,
                "only the gathered rows are cast and scaled ({scale_shape:?})"
            );
            assert_same_bits(&before, &run(rewritten), &format!("{scale_shape:?}"));
        }
    }

    #[test]
    fn a_table_used_elsewhere_too_is_left_alone() {
        let mut model = quantized_lookup([2048, 1]);
        // A second reader of the scaled table: it is computed whole anyway.
        let mul = model.node_by_name("mul").expect("mul").id;
        let sum = model
            .wire_node(
                "sum",
                tract_onnx::tract_core::ops::nn::Reduce::new(
                    tvec!(0, 1),
                    tract_onnx::tract_core::ops::nn::Reducer::Sum,
                ),
                &[OutletId::new(mul, 0)],
            )
            .expect("sum");
        let mut outputs = model.output_outlets().expect("outputs").to_vec();
        outputs.push(sum[0]);
        model.select_output_outlets(&outputs).expect("outputs");
        assert_eq!(super::gather_first(&mut model).expect("rewrite"), 0);
    }
}
