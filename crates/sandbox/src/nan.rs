//! Deterministic NaNs at the cost of a canonicalization where NaN bits can be seen, not after
//! every float operation.
//!
//! WebAssembly lets the CPU choose the sign and payload of a NaN that a float operation makes:
//! x86 makes `0/0` negative, Arm positive. A guest's results must not depend on the CPU it ran on
//! (a `--verify` compares providers' results bit for bit), so every such NaN must come out the
//! same everywhere. wasmtime's `cranelift_nan_canonicalization` does it by following every float
//! operation with a compare and a select; in a matrix multiply's inner loop that puts two more
//! instructions on every fused multiply-add's dependency chain (the demo model's pure-wasm run
//! takes ~1.45× as long with it).
//!
//! This pass rewrites each core module of a guest instead, so that a NaN is made canonical only
//! where its bits can be observed, and gives the same bits as that canonicalization after every
//! operation (the property test below checks it against wasmtime's, bit for bit). Whether a
//! float operation's result is NaN is fixed (by IEEE 754 and WebAssembly) by its operands, and a
//! result that is not NaN is exact; only a NaN's bits vary. So a value that may carry bits the CPU
//! chose (*tainted*: the result of float arithmetic, or moved from one by `neg`, `abs`, `select`,
//! a lane operation or a local) may flow freely into float arithmetic, comparisons and
//! truncations, which read only whether it is NaN. Anything else that reads it sees its bits and
//! gets it canonical first: a store, a reinterpretation, an integer or bitwise operation,
//! `copysign`, a call's arguments, a function's results, a global, a block's values, and a float
//! operation of the other lane width (an `f64x2` NaN read as `f32x4` lanes). A tainted value
//! carries the sign its NaN would have had (positive from arithmetic, flipped by `neg`, cleared
//! by `abs`): its canonical NaN is `0x7fc00000` or `0xffc00000` per 32-bit lane
//! (`0x7ff8000000000000` or `0xfff8000000000000` per 64-bit one).
//!
//! Canonicalizing bits that no float operation made (a NaN loaded from memory, integer data in a
//! `v128` local) would change what the program computes. Taint is therefore tracked per program
//! point, through locals and control flow: a local whose value is tainted on one path into a
//! merge (a block's end, a loop's header) and clean (or of the other sign) on another is
//! *mixed*. A mixed value may still feed float arithmetic; if one reaches an observer, the pass
//! canonicalizes that local on the tainted paths into the merge that mixed it (before the
//! branches, the fall-through, or the loop's entry) and runs again. A `v128` local that meets
//! `f32x4` taint and `f64x2` taint at a merge is canonicalized whenever it is set. Values on the
//! operand stack that cross a block boundary are canonicalized. The analysis repeats until
//! nothing changes; the last run writes the code. In a matrix multiply's inner loop the
//! accumulators meet only fused multiply-adds: the loop gains nothing, and they are
//! canonicalized once, when stored.
//!
//! Bounds (a guest is refused past them): [`MAX_WORK`] analysis steps per module,
//! [`MAX_HELD`] locals' states held at once per function, [`MAX_PASSES`] runs per function.
//! Features the pass does not model (exception handling, typed function references' branches)
//! are refused too.

use std::collections::{HashMap, HashSet};

use wasm_encoder::{CodeSection, Function, Instruction, RawSection};
use wasmparser::{
    FuncValidator, FuncValidatorAllocations, FunctionBody, Operator, Parser, Payload, ValType,
    ValidPayload, Validator, ValidatorResources, WasmFeatures,
};

/// This pass's version: part of the name of a rewritten guest kept on disk. Raise it whenever the
/// pass's output changes.
pub(crate) const VERSION: u32 = 2;
/// The canonical `f32` NaN (positive).
const CANON32: u32 = 0x7fc0_0000;
/// The canonical `f64` NaN (positive).
const CANON64: u64 = 0x7ff8_0000_0000_0000;
/// Analysis runs per function before the pass gives up on it.
const MAX_PASSES: usize = 256;
/// The analysis's work for one module, in steps (an operator, or a float local at a branch or
/// merge), before the pass gives up on it. The demo model's runner (18 MB) takes 32 M, and
/// ~0.7 s in all.
const MAX_WORK: u64 = 500_000_000;
/// The locals' states held at once by one function's analysis (open blocks × float locals):
/// 16 M × 12 bytes.
const MAX_HELD: usize = 16 << 20;

/// Rewrites a component (each core module in it, nested components included) or a core module.
pub(crate) fn rewrite(wasm: &[u8]) -> Result<Vec<u8>, String> {
    if Parser::is_component(wasm) {
        rewrite_component(wasm)
    } else if Parser::is_core_wasm(wasm) {
        rewrite_module(wasm)
    } else {
        Err("not a WebAssembly component or module".into())
    }
}

fn parse_error(e: wasmparser::BinaryReaderError) -> String {
    format!("invalid WebAssembly: {e}")
}

fn rewrite_component(wasm: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = wasm_encoder::Component::new();
    // Nested modules' and components' payloads come inline; they are rewritten whole.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(parse_error)?;
        match &payload {
            Payload::ModuleSection {
                unchecked_range, ..
            }
            | Payload::ComponentSection {
                unchecked_range, ..
            } => {
                if depth == 0 {
                    let inner = slice(wasm, unchecked_range)?;
                    let (id, rewritten) = match payload {
                        Payload::ModuleSection { .. } => (
                            wasm_encoder::ComponentSectionId::CoreModule,
                            rewrite_module(inner)?,
                        ),
                        _ => (
                            wasm_encoder::ComponentSectionId::Component,
                            rewrite_component(inner)?,
                        ),
                    };
                    out.section(&RawSection {
                        id: id as u8,
                        data: &rewritten,
                    });
                }
                depth += 1;
            }
            Payload::End(_) => {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            }
            _ if depth == 0 => {
                if let Some((id, range)) = payload.as_section() {
                    out.section(&RawSection {
                        id,
                        data: slice(wasm, &range)?,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(out.finish())
}

fn slice<'a>(wasm: &'a [u8], range: &std::ops::Range<usize>) -> Result<&'a [u8], String> {
    wasm.get(range.clone())
        .ok_or_else(|| "a section runs past the end".to_string())
}

fn rewrite_module(wasm: &[u8]) -> Result<Vec<u8>, String> {
    let mut validator = Validator::new_with_features(WasmFeatures::all());
    let mut out = wasm_encoder::Module::new();
    let mut code: Option<CodeSection> = None;
    let mut allocs = FuncValidatorAllocations::default();
    let mut work = MAX_WORK;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.map_err(parse_error)?;
        match validator.payload(&payload).map_err(parse_error)? {
            ValidPayload::Func(func, body) => {
                let mut fv = func.into_validator(allocs);
                let function = rewrite_function(&mut fv, &body, wasm, &mut work)
                    .map_err(|e| format!("function {}: {e}", fv.index()))?;
                allocs = fv.into_allocations();
                code.get_or_insert_with(CodeSection::new)
                    .function(&function);
                continue;
            }
            ValidPayload::End(_) => {
                if let Some(section) = code.take() {
                    out.section(&section);
                }
                break;
            }
            _ => {}
        }
        match &payload {
            Payload::CodeSectionStart { .. } => code = Some(CodeSection::new()),
            _ => {
                if let Some(section) = code.take() {
                    out.section(&section);
                }
                if let Some((id, range)) = payload.as_section() {
                    out.section(&RawSection {
                        id,
                        data: slice(wasm, &range)?,
                    });
                }
            }
        }
    }
    Ok(out.finish())
}

/// Which lanes a tainted value's NaNs are in: 32-bit (`f32`, `f32x4`) or 64-bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lane {
    F32,
    F64,
}

/// A merge (the op index of its `block`, `loop` or `if`) and a local there.
type Origin = (u32, u32);

/// A fix: where a tainted value is made canonical, the sign its NaNs would have had with a
/// canonicalization after every operation (positive, then flipped by each `neg`, cleared by
/// `abs`). Its canonical NaN is `0x7fc00000` or `0xffc00000` (per lane).
type Fix = (Lane, bool);

/// What is known about a value's bits at one program point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taint {
    /// Its bits are what the program says: never canonicalized.
    Clean,
    /// Float arithmetic made it on every path, then moves that leave its NaNs negative if the
    /// flag says so: it may hold CPU-chosen NaN bits.
    Tainted(Lane, bool),
    /// Tainted on some paths into the merge `Origin`, clean (or of the other sign) on others.
    Mixed(Lane, Origin),
}

impl Taint {
    fn lane(self) -> Option<Lane> {
        match self {
            Taint::Clean => None,
            Taint::Tainted(l, _) | Taint::Mixed(l, _) => Some(l),
        }
    }
}

/// What a move does to its operand's sign bit.
#[derive(Clone, Copy, Debug)]
enum SignOp {
    Keep,
    Flip,
    Clear,
}

/// How an operator treats its operands' bits.
#[derive(Clone, Copy, Debug)]
enum Class {
    /// Float arithmetic reading `.0` lanes: reads only NaN-ness, makes a tainted `.1` result.
    Arith(Lane, Lane),
    /// Reads only NaN-ness (comparisons, truncations); its result is clean.
    Test(Lane),
    /// Carries its operands' bits to its result (`neg`, `abs`, lanes, `pmin`): tainted when they
    /// are.
    Move(Lane, SignOp),
    /// `select`: carries one of its first two operands.
    Select,
    Get(u32),
    Set(u32),
    Tee(u32),
    Drop,
    /// Reads its operands' bits: each is made canonical first.
    Observe,
}

/// How an operator changes control flow.
#[derive(Clone, Debug)]
enum Control {
    None,
    Block,
    Loop,
    If,
    Else,
    End,
    Br(u32),
    BrIf(u32),
    BrTable(Box<[u32]>),
}

fn classify(op: &Operator<'_>) -> Result<(Class, Control), String> {
    use Lane::{F32, F64};
    use Operator as O;
    let class = match op {
        O::F32Add | O::F32Sub | O::F32Mul | O::F32Div | O::F32Min | O::F32Max | O::F32Sqrt => {
            Class::Arith(F32, F32)
        }
        O::F32Ceil | O::F32Floor | O::F32Trunc | O::F32Nearest => Class::Arith(F32, F32),
        O::F64Add | O::F64Sub | O::F64Mul | O::F64Div | O::F64Min | O::F64Max | O::F64Sqrt => {
            Class::Arith(F64, F64)
        }
        O::F64Ceil | O::F64Floor | O::F64Trunc | O::F64Nearest => Class::Arith(F64, F64),
        O::F32DemoteF64 => Class::Arith(F64, F32),
        O::F64PromoteF32 => Class::Arith(F32, F64),
        O::F32x4Add | O::F32x4Sub | O::F32x4Mul | O::F32x4Div | O::F32x4Min | O::F32x4Max => {
            Class::Arith(F32, F32)
        }
        O::F32x4Sqrt | O::F32x4Ceil | O::F32x4Floor | O::F32x4Trunc | O::F32x4Nearest => {
            Class::Arith(F32, F32)
        }
        O::F32x4RelaxedMadd | O::F32x4RelaxedNmadd | O::F32x4RelaxedMin | O::F32x4RelaxedMax => {
            Class::Arith(F32, F32)
        }
        O::F64x2Add | O::F64x2Sub | O::F64x2Mul | O::F64x2Div | O::F64x2Min | O::F64x2Max => {
            Class::Arith(F64, F64)
        }
        O::F64x2Sqrt | O::F64x2Ceil | O::F64x2Floor | O::F64x2Trunc | O::F64x2Nearest => {
            Class::Arith(F64, F64)
        }
        O::F64x2RelaxedMadd | O::F64x2RelaxedNmadd | O::F64x2RelaxedMin | O::F64x2RelaxedMax => {
            Class::Arith(F64, F64)
        }
        O::F32x4DemoteF64x2Zero => Class::Arith(F64, F32),
        O::F64x2PromoteLowF32x4 => Class::Arith(F32, F64),
        O::F32Eq | O::F32Ne | O::F32Lt | O::F32Gt | O::F32Le | O::F32Ge => Class::Test(F32),
        O::F64Eq | O::F64Ne | O::F64Lt | O::F64Gt | O::F64Le | O::F64Ge => Class::Test(F64),
        O::F32x4Eq | O::F32x4Ne | O::F32x4Lt | O::F32x4Gt | O::F32x4Le | O::F32x4Ge => {
            Class::Test(F32)
        }
        O::F64x2Eq | O::F64x2Ne | O::F64x2Lt | O::F64x2Gt | O::F64x2Le | O::F64x2Ge => {
            Class::Test(F64)
        }
        O::I32TruncF32S | O::I32TruncF32U | O::I64TruncF32S | O::I64TruncF32U => Class::Test(F32),
        O::I32TruncF64S | O::I32TruncF64U | O::I64TruncF64S | O::I64TruncF64U => Class::Test(F64),
        O::I32TruncSatF32S | O::I32TruncSatF32U | O::I64TruncSatF32S | O::I64TruncSatF32U => {
            Class::Test(F32)
        }
        O::I32TruncSatF64S | O::I32TruncSatF64U | O::I64TruncSatF64S | O::I64TruncSatF64U => {
            Class::Test(F64)
        }
        O::I32x4TruncSatF32x4S | O::I32x4TruncSatF32x4U => Class::Test(F32),
        O::I32x4TruncSatF64x2SZero | O::I32x4TruncSatF64x2UZero => Class::Test(F64),
        O::F32Neg | O::F32x4Neg => Class::Move(F32, SignOp::Flip),
        O::F64Neg | O::F64x2Neg => Class::Move(F64, SignOp::Flip),
        O::F32Abs | O::F32x4Abs => Class::Move(F32, SignOp::Clear),
        O::F64Abs | O::F64x2Abs => Class::Move(F64, SignOp::Clear),
        O::F32x4PMin | O::F32x4PMax | O::F32x4Splat => Class::Move(F32, SignOp::Keep),
        O::F32x4ExtractLane { .. } | O::F32x4ReplaceLane { .. } => Class::Move(F32, SignOp::Keep),
        O::F64x2PMin | O::F64x2PMax | O::F64x2Splat => Class::Move(F64, SignOp::Keep),
        O::F64x2ExtractLane { .. } | O::F64x2ReplaceLane { .. } => Class::Move(F64, SignOp::Keep),
        O::Select | O::TypedSelect { .. } => Class::Select,
        O::LocalGet { local_index } => Class::Get(*local_index),
        // Everything else, `copysign` included (it reads its second operand's sign bit and
        // gives the first operand's NaN that sign), sees its operands' bits.
        O::LocalSet { local_index } => Class::Set(*local_index),
        O::LocalTee { local_index } => Class::Tee(*local_index),
        O::Drop => Class::Drop,
        _ => Class::Observe,
    };
    let control = match op {
        O::Block { .. } => Control::Block,
        O::Loop { .. } => Control::Loop,
        O::If { .. } => Control::If,
        O::Else => Control::Else,
        O::End => Control::End,
        O::Br { relative_depth } => Control::Br(*relative_depth),
        O::BrIf { relative_depth } => Control::BrIf(*relative_depth),
        O::BrTable { targets } => {
            let mut all = targets
                .targets()
                .collect::<Result<Vec<u32>, _>>()
                .map_err(parse_error)?;
            all.push(targets.default());
            Control::BrTable(all.into())
        }
        O::Try { .. }
        | O::TryTable { .. }
        | O::Catch { .. }
        | O::CatchAll
        | O::Delegate { .. }
        | O::BrOnNull { .. }
        | O::BrOnNonNull { .. }
        | O::BrOnCast { .. }
        | O::BrOnCastFail { .. } => {
            return Err(format!(
                "`{op:?}` is not supported by the NaN canonicalization pass"
            ));
        }
        _ => Control::None,
    };
    Ok((class, control))
}

/// One operator of a function, as validation saw it.
struct Op {
    /// Its bytes in the module.
    start: usize,
    end: usize,
    class: Class,
    control: Control,
    pops: u32,
    pushes: u32,
    /// Its operands' types, deepest first (reachable operators only): `types[types_at..]`.
    types_at: usize,
    /// Whether the code before it can run (the validator's view).
    reachable: bool,
    /// Whether the code after it can run.
    reachable_after: bool,
    /// For an `if`: whether it has an `else`.
    has_else: bool,
    /// The operand stack's height after it.
    height: u32,
}

fn rewrite_function(
    fv: &mut FuncValidator<ValidatorResources>,
    body: &FunctionBody<'_>,
    wasm: &[u8],
    work: &mut u64,
) -> Result<Function, String> {
    let mut groups = Vec::new();
    let mut locals = body.get_locals_reader().map_err(parse_error)?;
    for _ in 0..locals.get_count() {
        let offset = locals.original_position();
        let (count, ty) = locals.read().map_err(parse_error)?;
        fv.define_locals(offset, count, ty).map_err(parse_error)?;
        groups.push((count, ty));
    }
    let n_locals = fv.len_locals();
    let mut ops = Vec::new();
    let mut types = Vec::new();
    let mut reader = body.get_operators_reader().map_err(parse_error)?;
    while !reader.eof() {
        let start = reader.original_position();
        let op = reader.read().map_err(parse_error)?;
        let end = reader.original_position();
        let (class, control) = classify(&op)?;
        let (pops, pushes) = op
            .operator_arity(&*fv)
            .ok_or_else(|| format!("`{op:?}` has no known arity"))?;
        let reachable = fv.get_control_frame(0).is_some_and(|f| !f.unreachable);
        let types_at = types.len();
        if reachable {
            for depth in (0..pops as usize).rev() {
                match fv.get_operand_type(depth) {
                    Some(Some(ty)) => types.push(ty),
                    _ => return Err("an operand of unknown type in reachable code".into()),
                }
            }
        }
        fv.op(start, &op).map_err(parse_error)?;
        let reachable_after = fv.get_control_frame(0).is_none_or(|f| !f.unreachable);
        let height = fv.operand_stack_height();
        ops.push(Op {
            start,
            end,
            class,
            control,
            pops,
            pushes,
            types_at,
            reachable,
            reachable_after,
            has_else: false,
            height,
        });
    }
    mark_ifs(&mut ops);
    let mut walk = Walk::new(fv, n_locals, &ops, &types, *work);
    for _ in 0..MAX_PASSES {
        let mut emit = Emit::new(n_locals, wasm);
        let changed = walk.pass(&mut emit);
        *work = walk.work;
        if !changed? {
            return emit.finish(&groups);
        }
    }
    Err(format!(
        "the NaN analysis did not settle in {MAX_PASSES} passes"
    ))
}

/// Sets `has_else` on every `if` that has one.
fn mark_ifs(ops: &mut [Op]) {
    // A stack of open frames: `Some(i)` for an `if` at op `i`, `None` for other blocks.
    let mut open: Vec<Option<usize>> = Vec::new();
    for i in 0..ops.len() {
        match ops[i].control {
            Control::Block | Control::Loop => open.push(None),
            Control::If => open.push(Some(i)),
            Control::Else => {
                if let Some(Some(at)) = open.last() {
                    ops[*at].has_else = true;
                }
            }
            Control::End => {
                open.pop();
            }
            _ => {}
        }
    }
}

/// A control frame during a pass.
struct Frame {
    kind: FrameKind,
    /// Its opening operator's index (the merge's identity).
    id: u32,
    /// The locals' taint on the paths that reached its end so far (blocks and ifs).
    exit: Option<Vec<Taint>>,
    /// For an `if`: the locals' taint when it was entered, for its `else`.
    entry: Option<Vec<Taint>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FrameKind {
    Function,
    Block,
    Loop,
    If,
}

/// The analysis state that carries over from pass to pass.
struct Walk<'a> {
    ops: &'a [Op],
    types: &'a [ValType],
    /// Local index → its slot in the analysis's states (float and vector locals only).
    slot_of: Vec<Option<u32>>,
    /// Slot → its local and type.
    slots: Vec<(u32, ValType)>,
    /// Steps left (see [`MAX_WORK`]).
    work: u64,
    /// Per loop (by its op index): the locals' taint on its back edges in the last pass.
    back_edges: HashMap<u32, Vec<Taint>>,
    /// Merges at which a local (by slot) is canonicalized on its tainted incoming paths.
    fixes: HashSet<Origin>,
    /// Locals (by slot) canonicalized whenever a tainted value is stored in them.
    strict: HashSet<u32>,
}

impl<'a> Walk<'a> {
    fn new(
        fv: &FuncValidator<ValidatorResources>,
        n_locals: u32,
        ops: &'a [Op],
        types: &'a [ValType],
        work: u64,
    ) -> Self {
        let mut slots = Vec::new();
        let slot_of = (0..n_locals)
            .map(|i| {
                let ty = fv
                    .get_local_type(i)
                    .filter(|t| matches!(t, ValType::F32 | ValType::F64 | ValType::V128))?;
                slots.push((i, ty));
                Some(slots.len() as u32 - 1)
            })
            .collect();
        Walk {
            ops,
            types,
            slot_of,
            slots,
            work,
            back_edges: HashMap::new(),
            fixes: HashSet::new(),
            strict: HashSet::new(),
        }
    }

    /// One pass over the function, writing its code into `emit`. Returns whether anything the
    /// analysis knows changed (then the code written is not final).
    fn pass(&mut self, emit: &mut Emit<'_>) -> Result<bool, String> {
        let mut changed = false;
        let learned = (self.fixes.len(), self.strict.len());
        let n = self.slots.len();
        let mut state: Option<Vec<Taint>> = Some(vec![Taint::Clean; n]);
        let mut stack: Vec<Taint> = Vec::new();
        let mut frames = vec![Frame {
            kind: FrameKind::Function,
            id: u32::MAX,
            exit: None,
            entry: None,
        }];
        let mut new_back_edges: HashMap<u32, Vec<Taint>> = HashMap::new();
        for (index, op) in self.ops.iter().enumerate() {
            let id = u32::try_from(index).map_err(|_| "too many operators")?;
            // An operator, and for control flow the locals' states it copies or merges.
            let steps = match op.control {
                Control::None => 1,
                _ => 1 + 2 * n as u64,
            };
            self.work = self.work.checked_sub(steps).ok_or_else(|| {
                format!("the guest needs more than {MAX_WORK} steps of NaN analysis")
            })?;
            if frames.len().saturating_mul(n) > MAX_HELD {
                return Err(format!(
                    "a function nests blocks {} deep with {n} float locals: too much to analyse",
                    frames.len()
                ));
            }
            if !op.reachable {
                // Dead code: copied as it is; frames kept in step.
                emit.raw(op);
                match &op.control {
                    Control::Block | Control::Loop | Control::If => frames.push(Frame {
                        kind: FrameKind::Block,
                        id,
                        exit: None,
                        entry: None,
                    }),
                    Control::Else => {
                        if let Some(frame) = frames.last_mut() {
                            state = frame.entry.take();
                        }
                    }
                    Control::End => {
                        if let Some(frame) = frames.pop() {
                            state = frame.exit;
                        }
                    }
                    _ => {}
                }
                if op.reachable_after {
                    // Code that runs only if dead code does: any state will do.
                    state = Some(state.unwrap_or_else(|| vec![Taint::Clean; n]));
                }
                stack.resize(op.height as usize, Taint::Clean);
                continue;
            }
            let mut locals = state.take().unwrap_or_else(|| vec![Taint::Clean; n]);
            let pops = op.pops as usize;
            let at = stack
                .len()
                .checked_sub(pops)
                .ok_or("the operand stack ran short")?;
            let operands = &stack[at..];
            let types = self
                .types
                .get(op.types_at..op.types_at + pops)
                .ok_or("operand types missing")?;
            let mut fix: Vec<Option<Fix>> = vec![None; pops];
            let fixes = &mut self.fixes;
            let mut result = Taint::Clean;
            match op.class {
                Class::Arith(input, _) | Class::Test(input) => {
                    for i in 0..pops {
                        if operands[i].lane().is_some_and(|l| l != input) {
                            observe(operands, i, &mut fix, fixes, &mut changed);
                        }
                    }
                    if let Class::Arith(_, output) = op.class {
                        // Canonicalized after every operation, its NaN would be positive.
                        result = Taint::Tainted(output, false);
                    }
                }
                Class::Move(lane, sign) => {
                    for i in 0..pops {
                        if operands[i].lane().is_some_and(|l| l != lane) {
                            observe(operands, i, &mut fix, fixes, &mut changed);
                        }
                    }
                    result = match carry(operands, pops, &mut fix, fixes, &mut changed) {
                        Taint::Tainted(l, negative) => Taint::Tainted(
                            l,
                            match sign {
                                SignOp::Keep => negative,
                                SignOp::Flip => !negative,
                                SignOp::Clear => false,
                            },
                        ),
                        other => other,
                    };
                }
                Class::Select => {
                    result = carry(operands, 2.min(pops), &mut fix, fixes, &mut changed);
                }
                Class::Get(local) => {
                    if let Some(Some(slot)) = self.slot_of.get(local as usize) {
                        result = locals[*slot as usize];
                    }
                }
                Class::Set(local) | Class::Tee(local) => {
                    let value = operands.first().copied().unwrap_or(Taint::Clean);
                    let slot = self.slot_of.get(local as usize).copied().flatten();
                    let stored = match slot {
                        Some(slot) if value != Taint::Clean && !self.strict.contains(&slot) => {
                            value
                        }
                        _ => {
                            observe(operands, 0, &mut fix, fixes, &mut changed);
                            Taint::Clean
                        }
                    };
                    if let Some(slot) = slot {
                        locals[slot as usize] = stored;
                    }
                    result = stored;
                }
                Class::Drop => {}
                Class::Observe => {
                    for i in 0..pops {
                        observe(operands, i, &mut fix, fixes, &mut changed);
                    }
                }
            }
            emit.fix_operands(types, &fix)?;
            // Control flow: merges, and the locals canonicalized on their way into one.
            let mut next = Some(locals);
            let mut written = false;
            match &op.control {
                Control::None => {}
                Control::Block => frames.push(Frame {
                    kind: FrameKind::Block,
                    id,
                    exit: None,
                    entry: None,
                }),
                Control::Loop => {
                    let mut entry = next.take().unwrap_or_default();
                    self.leave(id, &mut entry, emit);
                    let header = match self.back_edges.get(&id).cloned() {
                        Some(back) => self.join(id, &entry, &back),
                        None => entry,
                    };
                    frames.push(Frame {
                        kind: FrameKind::Loop,
                        id,
                        exit: None,
                        entry: None,
                    });
                    next = Some(header);
                }
                Control::If => {
                    let mut entry = next.take().unwrap_or_default();
                    if !op.has_else {
                        // The path around the `then` block merges at the `if`'s end as it is.
                        self.leave(id, &mut entry, emit);
                    }
                    frames.push(Frame {
                        kind: FrameKind::If,
                        id,
                        exit: if op.has_else {
                            None
                        } else {
                            Some(entry.clone())
                        },
                        entry: Some(entry.clone()),
                    });
                    next = Some(entry);
                }
                Control::Else => {
                    let mut out = next.take().unwrap_or_default();
                    let frame = frames.last_mut().ok_or("`else` outside a frame")?;
                    let fid = frame.id;
                    let entry = frame.entry.take();
                    let exit = frame.exit.take();
                    self.leave(fid, &mut out, emit);
                    let merged = self.merge(fid, exit, out);
                    let frame = frames.last_mut().ok_or("`else` outside a frame")?;
                    frame.exit = Some(merged);
                    next = entry;
                }
                Control::End => {
                    let frame = frames.pop().ok_or("`end` outside a frame")?;
                    match frame.kind {
                        FrameKind::Block | FrameKind::If => {
                            let mut out = next.take().unwrap_or_default();
                            self.leave(frame.id, &mut out, emit);
                            next = Some(self.merge(frame.id, frame.exit, out));
                        }
                        FrameKind::Loop | FrameKind::Function => {}
                    }
                }
                Control::BrIf(depth) if op.pops == 1 && self.split(&frames, *depth, &next)? => {
                    // The locals are canonicalized on the taken edge only: `br_if` becomes
                    // `if, (canonicalizations), br, end`, and the path on keeps its values.
                    let out = next.take().unwrap_or_default();
                    let mut taken = out.clone();
                    let outer = depth.checked_add(1).ok_or("a branch out of range")?;
                    emit.insn(Instruction::If(wasm_encoder::BlockType::Empty));
                    let depths = std::slice::from_ref(depth);
                    self.branches(depths, &mut frames, &mut taken, &mut new_back_edges, emit)?;
                    emit.insn(Instruction::Br(outer));
                    emit.insn(Instruction::End);
                    next = Some(out);
                    written = true;
                }
                Control::Br(depth) | Control::BrIf(depth) => {
                    let mut out = next.take().unwrap_or_default();
                    let depths = std::slice::from_ref(depth);
                    self.branches(depths, &mut frames, &mut out, &mut new_back_edges, emit)?;
                    next = Some(out);
                }
                Control::BrTable(depths) => {
                    let mut out = next.take().unwrap_or_default();
                    self.branches(depths, &mut frames, &mut out, &mut new_back_edges, emit)?;
                    next = Some(out);
                }
            }
            if !written {
                emit.raw(op);
            }
            stack.truncate(at);
            for _ in 0..op.pushes {
                stack.push(result_for(op, result));
            }
            state = if op.reachable_after { next } else { None };
            if op.reachable_after && stack.len() != op.height as usize {
                return Err("the operand stack lost step with validation".into());
            }
            stack.resize(op.height as usize, Taint::Clean);
        }
        if learned != (self.fixes.len(), self.strict.len()) {
            // New canonicalizations make the loops' back edges cleaner than they were: their
            // states start again from the entries (the iteration only ever adds taint).
            self.back_edges.clear();
            return Ok(true);
        }
        for (id, back) in new_back_edges {
            if self.back_edges.get(&id) != Some(&back) {
                self.back_edges.insert(id, back);
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Sends the locals `out` along a branch to each frame `depths` out (one, or a `br_table`'s
    /// targets): canonicalized once for every target that wants it, then merged into each.
    fn branches(
        &mut self,
        depths: &[u32],
        frames: &mut [Frame],
        out: &mut [Taint],
        back_edges: &mut HashMap<u32, Vec<Taint>>,
        emit: &mut Emit<'_>,
    ) -> Result<(), String> {
        for &depth in depths {
            let target = frame_at(frames, depth)?;
            if target.kind != FrameKind::Function {
                self.leave(target.id, out, emit);
            }
        }
        for &depth in depths {
            let target = frame_at(frames, depth)?;
            let (kind, fid) = (target.kind, target.id);
            match kind {
                FrameKind::Function => {}
                FrameKind::Loop => {
                    let merged = match back_edges.remove(&fid) {
                        Some(seen) => self.join(fid, &seen, out),
                        None => out.to_vec(),
                    };
                    back_edges.insert(fid, merged);
                }
                FrameKind::Block | FrameKind::If => {
                    let frame = frames
                        .iter_mut()
                        .rev()
                        .nth(depth as usize)
                        .ok_or("a branch out of range")?;
                    let merged = self.merge(fid, frame.exit.take(), out.to_vec());
                    let frame = frames
                        .iter_mut()
                        .rev()
                        .nth(depth as usize)
                        .ok_or("a branch out of range")?;
                    frame.exit = Some(merged);
                }
            }
        }
        Ok(())
    }

    /// Whether a branch to the frame `depth` out, with the locals `out`, canonicalizes any of
    /// them on its way.
    fn split(
        &self,
        frames: &[Frame],
        depth: u32,
        out: &Option<Vec<Taint>>,
    ) -> Result<bool, String> {
        let target = frame_at(frames, depth)?;
        Ok(target.kind != FrameKind::Function
            && out.iter().flatten().enumerate().any(|(slot, taint)| {
                matches!(taint, Taint::Tainted(..))
                    && self.fixes.contains(&(target.id, slot as u32))
            }))
    }

    /// On a path into the merge `id`: canonicalizes the locals fixed there that are tainted.
    fn leave(&self, id: u32, locals: &mut [Taint], emit: &mut Emit<'_>) {
        for (slot, taint) in locals.iter_mut().enumerate() {
            if let Taint::Tainted(lane, negative) = *taint
                && self.fixes.contains(&(id, slot as u32))
            {
                let (local, ty) = self.slots[slot];
                emit.canon_local(local, ty, (lane, negative));
                *taint = Taint::Clean;
            }
        }
    }

    fn merge(&mut self, id: u32, seen: Option<Vec<Taint>>, out: Vec<Taint>) -> Vec<Taint> {
        match seen {
            Some(seen) => self.join(id, &seen, &out),
            None => out,
        }
    }

    /// The locals' taint where paths `a` and `b` meet at merge `id`.
    /// (A lane conflict makes the local strict: the pass's caller sees that and runs again.)
    fn join(&mut self, id: u32, a: &[Taint], b: &[Taint]) -> Vec<Taint> {
        a.iter()
            .zip(b)
            .enumerate()
            .map(|(slot, (&x, &y))| {
                let slot = slot as u32;
                match (x, y) {
                    _ if x == y => x,
                    _ if x.lane().is_some() && y.lane().is_some() && x.lane() != y.lane() => {
                        // `f32x4` taint meets `f64x2` taint: canonicalized whenever set.
                        self.strict.insert(slot);
                        Taint::Clean
                    }
                    (Taint::Mixed(..), _) => x,
                    (_, Taint::Mixed(..)) => y,
                    // Clean on one path, or negative on one and positive on the other.
                    (Taint::Tainted(l, _), _) | (_, Taint::Tainted(l, _)) => {
                        Taint::Mixed(l, (id, slot))
                    }
                    (Taint::Clean, Taint::Clean) => Taint::Clean,
                }
            })
            .collect()
    }
}

fn frame_at(frames: &[Frame], depth: u32) -> Result<&Frame, String> {
    frames
        .iter()
        .rev()
        .nth(depth as usize)
        .ok_or_else(|| "a branch out of range".to_string())
}

/// The taint an operator's results get: only single-result value operators pass any on.
fn result_for(op: &Op, result: Taint) -> Taint {
    if op.pushes == 1 && matches!(op.control, Control::None) {
        result
    } else {
        Taint::Clean
    }
}

/// Marks operand `i` to be made canonical where it is read (if it may be tainted). A mixed
/// operand is canonicalized for now and, from the next pass, on its tainted paths instead.
fn observe(
    operands: &[Taint],
    i: usize,
    fix: &mut [Option<Fix>],
    fixes: &mut HashSet<Origin>,
    changed: &mut bool,
) {
    match operands[i] {
        Taint::Clean => {}
        Taint::Tainted(l, negative) => fix[i] = Some((l, negative)),
        Taint::Mixed(l, origin) => {
            // Not final: this pass's code canonicalizes bits that may be clean.
            fixes.insert(origin);
            *changed = true;
            fix[i] = Some((l, false));
        }
    }
}

/// The taint of a result that carries the bits of the first `moved` operands (`select`, `neg`,
/// lanes), those already marked in `fix` counting as clean. All alike: that taint. Otherwise the
/// tainted ones are made canonical and the result is clean (it must not be canonicalized later,
/// where some of its bits are clean ones).
fn carry(
    operands: &[Taint],
    moved: usize,
    fix: &mut [Option<Fix>],
    fixes: &mut HashSet<Origin>,
    changed: &mut bool,
) -> Taint {
    let effective = |i: usize, fix: &[Option<Fix>]| {
        if fix[i].is_some() {
            Taint::Clean
        } else {
            operands[i]
        }
    };
    let Some(first) = (0..moved).map(|i| effective(i, fix)).next() else {
        return Taint::Clean;
    };
    if (0..moved).all(|i| effective(i, fix) == first) {
        return first;
    }
    for i in 0..moved {
        if fix[i].is_none() {
            observe(operands, i, fix, fixes, changed);
        }
    }
    Taint::Clean
}

/// Writes a function's rewritten code.
struct Emit<'a> {
    wasm: &'a [u8],
    code: Vec<u8>,
    /// The next new local's index.
    next_local: u32,
    /// New locals, by type, in the order they were added.
    extra: Vec<ValType>,
    /// Spare locals of each type.
    scratch: HashMap<ValType, Vec<u32>>,
}

impl<'a> Emit<'a> {
    fn new(n_locals: u32, wasm: &'a [u8]) -> Self {
        Emit {
            wasm,
            code: Vec::new(),
            next_local: n_locals,
            extra: Vec::new(),
            scratch: HashMap::new(),
        }
    }

    fn raw(&mut self, op: &Op) {
        self.code.extend_from_slice(&self.wasm[op.start..op.end]);
    }

    fn insn(&mut self, insn: Instruction<'_>) {
        use wasm_encoder::Encode;
        insn.encode(&mut self.code);
    }

    /// The `n`th spare local of type `ty` (added when there are fewer).
    fn scratch(&mut self, ty: ValType, n: usize) -> u32 {
        let pool = self.scratch.entry(ty).or_default();
        while pool.len() <= n {
            pool.push(self.next_local);
            self.extra.push(ty);
            self.next_local += 1;
        }
        pool[n]
    }

    /// Makes the operands marked in `fix` canonical (spilling those above them to locals).
    fn fix_operands(&mut self, types: &[ValType], fix: &[Option<Fix>]) -> Result<(), String> {
        let Some(deepest) = fix.iter().position(Option::is_some) else {
            return Ok(());
        };
        let mut used: HashMap<ValType, usize> = HashMap::new();
        let mut slots = vec![0u32; types.len()];
        for j in (deepest..types.len()).rev() {
            let ty = types[j];
            if !matches!(
                ty,
                ValType::I32 | ValType::I64 | ValType::F32 | ValType::F64 | ValType::V128
            ) {
                return Err(format!(
                    "a {ty} operand above a float one would need a local"
                ));
            }
            let n = used.entry(ty).or_default();
            slots[j] = self.scratch(ty, *n);
            *n += 1;
            self.insn(Instruction::LocalSet(slots[j]));
        }
        for j in deepest..types.len() {
            match fix[j] {
                Some(f) => self.canon_from(slots[j], types[j], f),
                None => self.insn(Instruction::LocalGet(slots[j])),
            }
        }
        Ok(())
    }

    /// Pushes local `local`'s value (of type `ty`), its NaNs in `lane` made canonical (of the
    /// fix's sign).
    fn canon_from(&mut self, local: u32, ty: ValType, (lane, negative): Fix) {
        let nan32 = CANON32 | (u32::from(negative) << 31);
        let nan64 = CANON64 | (u64::from(negative) << 63);
        let (ne, select) = match (ty, lane) {
            (ValType::F32, _) => {
                self.insn(Instruction::F32Const(wasm_encoder::Ieee32::new(nan32)));
                (Instruction::F32Ne, Instruction::Select)
            }
            (ValType::F64, _) => {
                self.insn(Instruction::F64Const(wasm_encoder::Ieee64::new(nan64)));
                (Instruction::F64Ne, Instruction::Select)
            }
            (_, Lane::F32) => {
                let lanes = (0..4).fold(0u128, |v, i| v | (u128::from(nan32) << (32 * i)));
                self.insn(Instruction::V128Const(lanes as i128));
                (Instruction::F32x4Ne, Instruction::V128Bitselect)
            }
            (_, Lane::F64) => {
                let lanes = u128::from(nan64) | (u128::from(nan64) << 64);
                self.insn(Instruction::V128Const(lanes as i128));
                (Instruction::F64x2Ne, Instruction::V128Bitselect)
            }
        };
        self.insn(Instruction::LocalGet(local));
        self.insn(Instruction::LocalGet(local));
        self.insn(Instruction::LocalGet(local));
        self.insn(ne);
        self.insn(select);
    }

    /// Makes local `local`'s NaNs canonical in place.
    fn canon_local(&mut self, local: u32, ty: ValType, fix: Fix) {
        self.canon_from(local, ty, fix);
        self.insn(Instruction::LocalSet(local));
    }

    fn finish(self, groups: &[(u32, ValType)]) -> Result<Function, String> {
        let encode = |ty: ValType| -> Result<wasm_encoder::ValType, String> {
            use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
            RoundtripReencoder
                .val_type(ty)
                .map_err(|e| format!("local type: {e}"))
        };
        let mut locals = Vec::with_capacity(groups.len() + self.extra.len());
        for &(count, ty) in groups {
            locals.push((count, encode(ty)?));
        }
        for &ty in &self.extra {
            locals.push((1, encode(ty)?));
        }
        let mut function = Function::new(locals);
        function.raw(self.code);
        Ok(function)
    }
}

#[cfg(test)]
mod tests {
    //! Modules built here run twice in wasmtime: as written, with wasmtime's canonicalization
    //! after every float operation, and rewritten, without it. Where NaN bits can be seen the
    //! rewritten one must show the canonical NaN for every NaN float arithmetic made (x86's own
    //! `0/0` is negative, so a missed spot shows), and everything else bit for bit as written.

    use super::*;
    use proptest::prelude::*;
    use wasm_encoder::{
        BlockType, CodeSection, ExportKind, ExportSection, FunctionSection, Instruction as I,
        MemArg, MemorySection, MemoryType, Module, TypeSection, ValType as T,
    };
    use wasmtime::{Config, Engine, Instance, Store, Val};

    /// A function: parameters, results, extra locals, body (without the final `end`).
    struct Func {
        params: Vec<T>,
        results: Vec<T>,
        locals: Vec<T>,
        body: Vec<I<'static>>,
    }

    /// A module of `funcs` (exported as `f0`, `f1`, …) and one exported page of memory.
    fn module(funcs: &[Func]) -> Vec<u8> {
        let mut types = TypeSection::new();
        let mut functions = FunctionSection::new();
        let mut exports = ExportSection::new();
        let mut code = CodeSection::new();
        for (i, f) in funcs.iter().enumerate() {
            let i = i as u32;
            types.ty().function(f.params.clone(), f.results.clone());
            functions.function(i);
            exports.export(&format!("f{i}"), ExportKind::Func, i);
            let mut func = Function::new(f.locals.iter().map(|t| (1, *t)));
            for insn in &f.body {
                func.instruction(insn);
            }
            func.instruction(&I::End);
            code.function(&func);
        }
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        exports.export("mem", ExportKind::Memory, 0);
        let mut m = Module::new();
        m.section(&types)
            .section(&functions)
            .section(&memories)
            .section(&exports)
            .section(&code);
        m.finish()
    }

    fn engine(canonicalize: bool) -> Engine {
        let mut config = Config::new();
        config
            .wasm_relaxed_simd(true)
            .relaxed_simd_deterministic(true)
            .cranelift_nan_canonicalization(canonicalize);
        Engine::new(&config).expect("engine")
    }

    /// Runs export `name` with `memory` preloaded: its results' bits and the memory after.
    fn run(
        engine: &Engine,
        wasm: &[u8],
        name: &str,
        args: &[Val],
        memory: &[u8],
    ) -> (Vec<u128>, Vec<u8>) {
        let module = wasmtime::Module::new(engine, wasm).expect("compiles");
        let mut store = Store::new(engine, ());
        let instance = Instance::new(&mut store, &module, &[]).expect("instantiates");
        let mem = instance.get_memory(&mut store, "mem").expect("memory");
        mem.write(&mut store, 0, memory).expect("preload");
        let func = instance.get_func(&mut store, name).expect("export");
        let mut results = vec![Val::I32(0); func.ty(&store).results().len()];
        func.call(&mut store, args, &mut results).expect("runs");
        let bits = results
            .iter()
            .map(|v| match v {
                Val::I32(x) => *x as u32 as u128,
                Val::I64(x) => *x as u64 as u128,
                Val::F32(x) => u128::from(*x),
                Val::F64(x) => u128::from(*x),
                Val::V128(x) => x.as_u128(),
                _ => panic!("unexpected result"),
            })
            .collect();
        let mut after = vec![0; 1024];
        mem.read(&store, 0, &mut after).expect("read");
        (bits, after)
    }

    fn rewritten(wasm: &[u8]) -> Vec<u8> {
        let out = rewrite(wasm).expect("rewrites");
        wasmparser::Validator::new_with_features(WasmFeatures::all())
            .validate_all(&out)
            .expect("the rewritten module validates");
        out
    }

    fn f32c(x: f32) -> I<'static> {
        I::F32Const(x.into())
    }

    fn mem(offset: u64) -> MemArg {
        MemArg {
            offset,
            align: 2,
            memory_index: 0,
        }
    }

    fn zero_div_zero() -> Vec<I<'static>> {
        vec![f32c(0.0), f32c(0.0), I::F32Div]
    }

    /// Runs `f` (one i32 parameter) rewritten, without canonicalization: its one result's bits.
    fn result_of(f: Func, arg: i32, memory: &[u8]) -> u128 {
        let wasm = rewritten(&module(&[f]));
        run(&engine(false), &wasm, "f0", &[Val::I32(arg)], memory).0[0]
    }

    #[test]
    fn a_nan_returned_stored_or_reinterpreted_is_canonical() {
        let returned = Func {
            params: vec![T::I32],
            results: vec![T::F32],
            locals: vec![],
            body: zero_div_zero(),
        };
        assert_eq!(result_of(returned, 0, &[]), u128::from(CANON32));
        // Through a local, a loop of additions and a negation, then reinterpreted.
        let mut body = zero_div_zero();
        body.extend([
            I::LocalSet(1),
            I::Loop(BlockType::Empty),
            I::LocalGet(1),
            f32c(1.0),
            I::F32Add,
            I::F32Neg,
            I::LocalSet(1),
            I::LocalGet(0),
            I::I32Const(1),
            I::I32Sub,
            I::LocalTee(0),
            I::BrIf(0),
            I::End,
            I::LocalGet(1),
            I::I32ReinterpretF32,
        ]);
        let looped = Func {
            params: vec![T::I32],
            results: vec![T::I32],
            locals: vec![T::F32],
            body,
        };
        assert_eq!(result_of(looped, 3, &[]), u128::from(CANON32 | 0x8000_0000));
        // Negated, stored, loaded as an integer: the canonical NaN, negated (as wasmtime's
        // canonicalization after every operation has it).
        let mut body = vec![I::I32Const(0)];
        body.extend(zero_div_zero());
        body.extend([
            I::F32Neg,
            I::F32Store(mem(64)),
            I::I32Const(0),
            I::I32Load(mem(64)),
        ]);
        let stored = Func {
            params: vec![T::I32],
            results: vec![T::I32],
            locals: vec![],
            body,
        };
        assert_eq!(result_of(stored, 0, &[]), u128::from(CANON32 | 0x8000_0000));
        // copysign takes the sign of a canonical NaN: positive.
        let mut body = vec![f32c(-2.0)];
        body.extend(zero_div_zero());
        body.push(I::F32Copysign);
        let signed = Func {
            params: vec![T::I32],
            results: vec![T::F32],
            locals: vec![],
            body,
        };
        assert_eq!(result_of(signed, 0, &[]), u128::from(2.0f32.to_bits()));
    }

    #[test]
    fn bits_no_float_operation_made_are_kept() {
        // A NaN with a payload, loaded, moved through a local and negated, stored as it is.
        let payload = 0x7fa0_0001u32;
        let body = vec![
            I::I32Const(0),
            I::F32Load(mem(0)),
            I::LocalSet(1),
            I::LocalGet(1),
            I::F32Neg,
            I::I32ReinterpretF32,
        ];
        let moved = Func {
            params: vec![T::I32],
            results: vec![T::I32],
            locals: vec![T::F32],
            body,
        };
        assert_eq!(
            result_of(moved, 0, &payload.to_le_bytes()),
            u128::from(payload ^ 0x8000_0000)
        );
        // One v128 local: f32x4 arithmetic on one path, integer data shaped like NaNs on the
        // other; read as integers after the paths meet. Only the arithmetic path's NaNs change.
        let ints = 0x7fa0_0001_7fa0_0001_7fa0_0001_7fa0_0001u128;
        let func = || Func {
            params: vec![T::I32],
            results: vec![T::I32],
            locals: vec![T::V128],
            body: vec![
                I::LocalGet(0),
                I::If(BlockType::Empty),
                f32c(0.0),
                I::F32x4Splat,
                f32c(0.0),
                I::F32x4Splat,
                I::F32x4Div,
                I::LocalSet(1),
                I::Else,
                I::V128Const(ints as i128),
                I::LocalSet(1),
                I::End,
                I::LocalGet(1),
                I::I32x4ExtractLane(2),
            ],
        };
        assert_eq!(result_of(func(), 1, &[]), u128::from(CANON32));
        assert_eq!(result_of(func(), 0, &[]), 0x7fa0_0001);
    }

    /// One step of an accumulator loop: `acc = acc * x + acc` (x loaded at 16), then `n -= 1`,
    /// leaving `n` on the stack.
    fn madd_step() -> Vec<I<'static>> {
        vec![
            I::LocalGet(1),
            I::I32Const(0),
            I::V128Load(mem(16)),
            I::LocalGet(1),
            I::F32x4RelaxedMadd,
            I::LocalSet(1),
            I::LocalGet(0),
            I::I32Const(1),
            I::I32Sub,
            I::LocalTee(0),
        ]
    }

    /// `f0(n)`: acc = load 0; block { exit if n == 0; loop { `body` } }; store acc at 32.
    fn accumulator_loop(body: Vec<I<'static>>) -> Vec<u8> {
        let mut code = vec![
            I::I32Const(0),
            I::V128Load(mem(0)),
            I::LocalSet(1),
            I::Block(BlockType::Empty),
            I::LocalGet(0),
            I::I32Eqz,
            I::BrIf(0),
            I::Loop(BlockType::Empty),
        ];
        code.extend(body);
        code.extend([
            I::End,
            I::End,
            I::I32Const(0),
            I::LocalGet(1),
            I::V128Store(mem(32)),
        ]);
        module(&[Func {
            params: vec![T::I32],
            results: vec![],
            locals: vec![T::V128],
            body: code,
        }])
    }

    /// Runs an accumulator loop as written with canonicalization and rewritten without, for
    /// 0 to 4 iterations, and demands the same stored bits; with none, a loaded NaN's payload
    /// goes out as it came.
    fn check_accumulator_loop(wasm: &[u8], out: &[u8]) {
        let mut memory = Vec::new();
        for x in [1.5f32, f32::INFINITY, -1.0, 0.0] {
            memory.extend(x.to_le_bytes());
        }
        for x in [2.0f32, f32::NEG_INFINITY, 0.5, 1.0] {
            memory.extend(x.to_le_bytes());
        }
        for n in 0..5 {
            let (_, want) = run(&engine(true), wasm, "f0", &[Val::I32(n)], &memory);
            let (_, got) = run(&engine(false), out, "f0", &[Val::I32(n)], &memory);
            assert_eq!(&got[32..48], &want[32..48], "{n} iterations");
        }
        let mut payload = memory.clone();
        payload[12..16].copy_from_slice(&0xffa0_0001u32.to_le_bytes());
        let (_, got) = run(&engine(false), out, "f0", &[Val::I32(0)], &payload);
        assert_eq!(&got[32..48], &payload[0..16]);
    }

    #[test]
    fn an_accumulator_is_canonicalized_after_its_loop_not_in_it() {
        // Inside the loop the accumulator only meets arithmetic: the loop body gains no
        // instructions.
        let mut body = madd_step();
        body.push(I::BrIf(0));
        let wasm = accumulator_loop(body);
        let out = rewritten(&wasm);
        // The loop's body, between `loop` and its `br_if`, is the same bytes as before.
        assert_eq!(loop_body(&out), loop_body(&wasm));
        check_accumulator_loop(&wasm, &out);
    }

    #[test]
    fn an_early_exit_canonicalizes_on_its_own_edge() {
        // loop { step; exit if n == 0; step; again if n != 0 }. The exit's merge also takes
        // the loaded bits (n == 0 at the start), so the early exit canonicalizes; the path on
        // through the loop does not: the `br_if` becomes `if, (canonicalization), br, end`.
        let mut body = madd_step();
        body.extend([I::I32Eqz, I::BrIf(1)]);
        body.extend(madd_step());
        body.push(I::BrIf(0));
        let wasm = accumulator_loop(body);
        let out = rewritten(&wasm);
        let (before, after) = (ops_of(&wasm), ops_of(&out));
        let exit = before
            .iter()
            .position(|op| op == "BrIf { relative_depth: 1 }");
        let exit = exit.expect("the early exit");
        // Up to the exit the code is unchanged; the exit is an `if` whose body branches out.
        assert_eq!(after[..exit], before[..exit]);
        assert!(after[exit].starts_with("If"), "{}", after[exit]);
        let end = exit
            + after[exit..]
                .iter()
                .position(|op| op == "End")
                .expect("end");
        assert_eq!(after[end - 1], "Br { relative_depth: 2 }");
        assert!(after[exit..end].iter().any(|op| op == "F32x4Ne"));
        // After it, the second step is as it was.
        assert_eq!(after[end + 1..end + 11], before[exit + 1..exit + 11]);
        check_accumulator_loop(&wasm, &out);
    }

    /// The first function's operators, each as its `Debug` text.
    fn ops_of(wasm: &[u8]) -> Vec<String> {
        for payload in Parser::new(0).parse_all(wasm) {
            if let Ok(Payload::CodeSectionEntry(body)) = payload {
                let mut reader = body.get_operators_reader().expect("ops");
                let mut ops = Vec::new();
                while !reader.eof() {
                    ops.push(format!("{:?}", reader.read().expect("op")));
                }
                return ops;
            }
        }
        panic!("no function")
    }

    /// The bytes between a function's first `loop` and the `br_if` that closes it.
    fn loop_body(wasm: &[u8]) -> Vec<u8> {
        let mut ops = Vec::new();
        for payload in Parser::new(0).parse_all(wasm) {
            if let Ok(Payload::CodeSectionEntry(body)) = payload {
                let mut reader = body.get_operators_reader().expect("ops");
                let mut inside = false;
                while !reader.eof() {
                    let op = reader.read().expect("op");
                    if matches!(op, Operator::BrIf { .. }) && inside {
                        break;
                    }
                    if inside {
                        ops.push(format!("{op:?}"));
                    }
                    if matches!(op, Operator::Loop { .. }) {
                        inside = true;
                    }
                }
            }
        }
        ops.join(" ").into_bytes()
    }

    #[test]
    fn lanes_of_both_widths_in_one_local_are_canonical_each_way() {
        // One v128 local takes f32x4 NaNs on one path and f64x2 NaNs on the other.
        let func = || Func {
            params: vec![T::I32],
            results: vec![T::V128],
            locals: vec![T::V128],
            body: vec![
                I::LocalGet(0),
                I::If(BlockType::Empty),
                f32c(0.0),
                I::F32x4Splat,
                I::LocalTee(1),
                I::LocalGet(1),
                I::F32x4Div,
                I::LocalSet(1),
                I::Else,
                I::F64Const(0.0f64.into()),
                I::F64x2Splat,
                I::LocalTee(1),
                I::LocalGet(1),
                I::F64x2Div,
                I::LocalSet(1),
                I::End,
                I::LocalGet(1),
            ],
        };
        let four = (0..4).fold(0u128, |v, i| v | (u128::from(CANON32) << (32 * i)));
        let two = u128::from(CANON64) | (u128::from(CANON64) << 64);
        assert_eq!(result_of(func(), 1, &[]), four);
        assert_eq!(result_of(func(), 0, &[]), two);
    }

    #[test]
    fn values_crossing_calls_and_blocks_are_canonical() {
        // f1 returns its argument's bits; f0 passes it 0/0 from inside a block with a result.
        let mut body = vec![I::Block(BlockType::Result(T::F32))];
        body.extend(zero_div_zero());
        body.extend([I::End, I::Call(1)]);
        let caller = Func {
            params: vec![T::I32],
            results: vec![T::I32],
            locals: vec![],
            body,
        };
        let callee = Func {
            params: vec![T::F32],
            results: vec![T::I32],
            locals: vec![],
            body: vec![I::LocalGet(0), I::I32ReinterpretF32],
        };
        let wasm = rewritten(&module(&[caller, callee]));
        let (bits, _) = run(&engine(false), &wasm, "f0", &[Val::I32(0)], &[]);
        assert_eq!(bits[0], u128::from(CANON32));
        // A float under an integer operand: spilled, canonicalized, put back.
        let mut body = zero_div_zero();
        body.extend([I::I32Const(7), I::Call(1)]);
        let caller = Func {
            params: vec![T::I32],
            results: vec![T::I32],
            locals: vec![],
            body,
        };
        let callee = Func {
            params: vec![T::F32, T::I32],
            results: vec![T::I32],
            locals: vec![],
            body: vec![
                I::LocalGet(0),
                I::I32ReinterpretF32,
                I::LocalGet(1),
                I::I32Add,
            ],
        };
        let wasm = rewritten(&module(&[caller, callee]));
        let (bits, _) = run(&engine(false), &wasm, "f0", &[Val::I32(0)], &[]);
        assert_eq!(bits[0], u128::from(CANON32 + 7));
    }

    #[test]
    fn a_function_too_costly_to_analyse_is_refused() {
        // 2,000 float locals in 10,000 nested blocks: 20 M states held at once.
        let mut body = vec![I::Block(BlockType::Empty); 10_000];
        body.extend(vec![I::End; 10_000]);
        let deep = Func {
            params: vec![],
            results: vec![],
            locals: vec![T::F32; 2_000],
            body,
        };
        let err = rewrite(&module(&[deep])).expect_err("refused");
        assert!(err.contains("too much to analyse"), "{err}");
        // 20,000 float locals and 13,000 branches: each merges every local, 520 M steps.
        let mut body = Vec::new();
        for _ in 0..13_000 {
            body.extend([
                I::Block(BlockType::Empty),
                I::I32Const(0),
                I::BrIf(0),
                I::End,
            ]);
        }
        let wide = Func {
            params: vec![],
            results: vec![],
            locals: vec![T::F32; 20_000],
            body,
        };
        let err = rewrite(&module(&[wide])).expect_err("refused");
        assert!(err.contains("steps of NaN analysis"), "{err}");
    }

    /// Values carried by control flow (block parameters, `br_if` and `br_table` values, a loop's
    /// parameter around its back edge, `return` from inside a block, dead code after it): the
    /// same bits as wasmtime's canonicalization after every operation.
    #[test]
    fn values_carried_by_control_flow_keep_the_bits_canonicalization_gives() {
        let mut types = TypeSection::new();
        types.ty().function([T::I32], [T::F32]);
        types.ty().function([T::F32], [T::F32]);
        let mut body = zero_div_zero();
        body.extend([
            // A block with a parameter, left early with a value by br_if.
            I::Block(BlockType::FunctionType(1)),
            f32c(1.0),
            I::F32Add,
            I::LocalGet(0),
            I::I32Const(1),
            I::I32And,
            I::BrIf(0),
            I::F32Neg,
            I::End,
            I::LocalSet(1),
            I::I32Const(0),
            I::LocalGet(1),
            I::F32Store(mem(0)),
            // A loop whose parameter goes around the back edge.
            I::I32Const(3),
            I::LocalSet(2),
            f32c(-1.0),
            I::F32Sqrt,
            I::Loop(BlockType::FunctionType(1)),
            f32c(2.0),
            I::F32Mul,
            I::F32Neg,
            I::LocalGet(2),
            I::I32Const(1),
            I::I32Sub,
            I::LocalTee(2),
            I::BrIf(0),
            I::End,
            I::LocalSet(3),
            I::I32Const(0),
            I::LocalGet(3),
            I::F32Store(mem(4)),
            I::LocalGet(3),
            I::LocalGet(1),
            I::F32Add,
            I::LocalSet(1),
            // br_table with a value to two blocks.
            I::Block(BlockType::Result(T::F32)),
            I::Block(BlockType::Result(T::F32)),
            f32c(f32::INFINITY),
            f32c(f32::INFINITY),
            I::F32Sub,
            I::F32Neg,
            I::LocalGet(0),
            I::I32Const(1),
            I::I32ShrU,
            I::I32Const(1),
            I::I32And,
            I::BrTable(vec![0].into(), 1),
            I::End,
            I::F32Abs,
            I::End,
            I::LocalSet(3),
            I::I32Const(0),
            I::LocalGet(3),
            I::F32Store(mem(8)),
            I::LocalGet(3),
            I::LocalGet(1),
            I::F32Copysign,
            I::LocalSet(1),
            // return from inside an if, dead code after it.
            I::LocalGet(0),
            I::I32Const(4),
            I::I32And,
            I::If(BlockType::Result(T::F32)),
            I::LocalGet(1),
            I::F32Neg,
            I::Return,
            f32c(1.0),
            f32c(2.0),
            I::F32Add,
            I::Drop,
            I::Block(BlockType::Empty),
            f32c(0.0),
            I::F32Sqrt,
            I::Drop,
            I::End,
            I::Else,
            I::LocalGet(1),
            I::End,
            I::LocalGet(1),
            I::F32Mul,
            I::End,
        ]);
        let mut functions = FunctionSection::new();
        functions.function(0);
        let mut exports = ExportSection::new();
        exports.export("f0", ExportKind::Func, 0);
        exports.export("mem", ExportKind::Memory, 0);
        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        });
        let mut code = CodeSection::new();
        let mut func = Function::new([(1, T::F32), (1, T::I32), (1, T::F32)]);
        for insn in &body {
            func.instruction(insn);
        }
        code.function(&func);
        let mut m = Module::new();
        m.section(&types)
            .section(&functions)
            .section(&memories)
            .section(&exports)
            .section(&code);
        let wasm = m.finish();
        let out = rewritten(&wasm);
        let (canonicalizing, plain) = (engine(true), engine(false));
        let mut differs = false;
        for arg in 0..8 {
            let want = run(&canonicalizing, &wasm, "f0", &[Val::I32(arg)], &[]);
            let got = run(&plain, &out, "f0", &[Val::I32(arg)], &[]);
            let other = run(&canonicalizing, &out, "f0", &[Val::I32(arg)], &[]);
            assert_eq!(
                (&want.0, &want.1[..12]),
                (&got.0, &got.1[..12]),
                "argument {arg}"
            );
            assert_eq!(
                (&got.0, &got.1[..12]),
                (&other.0, &other.1[..12]),
                "argument {arg}"
            );
            let raw = run(&plain, &wasm, "f0", &[Val::I32(arg)], &[]);
            differs |= (&raw.0, &raw.1[..12]) != (&want.0, &want.1[..12]);
        }
        // x86 makes 0/0 negative: there, the module as written gives other bits without
        // canonicalization, so the comparisons above see what the rewrite does.
        if cfg!(target_arch = "x86_64") {
            assert!(
                differs,
                "the module as written already gives canonical NaNs"
            );
        }
    }

    #[test]
    fn what_is_not_a_module_is_refused() {
        assert!(rewrite(b"not wasm").is_err());
        assert!(rewrite(&[0, b'a', b's', b'm', 1, 0, 0, 0, 0xff]).is_err());
    }

    // Random programs: straight-line float code, locals, branches on the argument's bits, a
    // loop, stores of every kind of value. Inputs in memory include NaNs with payloads.

    #[derive(Clone, Debug)]
    enum F {
        Load(u8),
        Const(f32),
        Get(u8),
        Bin(u8, Box<F>, Box<F>),
        Un(u8, Box<F>),
        CopySign(Box<F>, Box<F>),
        Extract(u8, Box<V>),
        Select(u8, Box<F>, Box<F>),
        If(u8, Box<F>, Box<F>),
        /// `block (result f32) a; br_if 0; drop; b end`: a value carried by a branch.
        BrIf(u8, Box<F>, Box<F>),
    }

    #[derive(Clone, Debug)]
    enum V {
        Load(u8),
        Splat(Box<F>),
        Get(u8),
        Bin(u8, Box<V>, Box<V>),
        Un(u8, Box<V>),
        Madd(Box<V>, Box<V>, Box<V>),
        Int(Box<V>, Box<V>),
        Replace(u8, Box<V>, Box<F>),
        Select(u8, Box<V>, Box<V>),
        PMin(Box<V>, Box<V>),
        /// `f64x2.splat(f64.promote_f32(f))`.
        SplatWide(Box<F>),
        Demote(Box<V>),
    }

    #[derive(Clone, Debug)]
    enum S {
        SetF(u8, F),
        SetV(u8, V),
        StoreF(F),
        StoreV(V),
        If(u8, Vec<S>, Vec<S>),
        Loop(Vec<S>),
        /// `block a; br_if 0; b end`.
        Exit(u8, Vec<S>, Vec<S>),
        /// `block block br_table [1] 0 end a end`: `a` runs when the bit is clear.
        Switch(u8, Vec<S>),
    }

    fn f_expr() -> BoxedStrategy<F> {
        let leaf = prop_oneof![
            (0u8..8).prop_map(F::Load),
            prop::sample::select(vec![
                0.0f32,
                -0.0,
                1.0,
                -1.5,
                f32::INFINITY,
                f32::NEG_INFINITY,
                3.0e38
            ])
            .prop_map(F::Const),
            (0u8..2).prop_map(F::Get),
        ];
        leaf.prop_recursive(4, 24, 3, move |inner| {
            let mut options = vec![
                (0u8..6, inner.clone(), inner.clone())
                    .prop_map(|(o, a, b)| F::Bin(o, a.into(), b.into()))
                    .boxed(),
                (0u8..4, inner.clone())
                    .prop_map(|(o, a)| F::Un(o, a.into()))
                    .boxed(),
                (0u8..4, v_leaf())
                    .prop_map(|(l, v)| F::Extract(l, v.into()))
                    .boxed(),
                (0u8..4, inner.clone(), inner.clone())
                    .prop_map(|(c, a, b)| F::Select(c, a.into(), b.into()))
                    .boxed(),
                (0u8..4, inner.clone(), inner.clone())
                    .prop_map(|(c, a, b)| F::If(c, a.into(), b.into()))
                    .boxed(),
            ];
            options.push(
                (0u8..4, inner.clone(), inner.clone())
                    .prop_map(|(c, a, b)| F::BrIf(c, a.into(), b.into()))
                    .boxed(),
            );
            options.push(
                (inner.clone(), inner)
                    .prop_map(|(a, b)| F::CopySign(a.into(), b.into()))
                    .boxed(),
            );
            prop::strategy::Union::new(options)
        })
        .boxed()
    }

    fn v_leaf() -> impl Strategy<Value = V> {
        prop_oneof![(0u8..2).prop_map(V::Load), (0u8..2).prop_map(V::Get)]
    }

    fn v_expr() -> BoxedStrategy<V> {
        v_leaf()
            .prop_recursive(4, 24, 3, move |inner| {
                let mut options = vec![
                    f_expr().prop_map(|f| V::Splat(f.into())).boxed(),
                    (0u8..6, inner.clone(), inner.clone())
                        .prop_map(|(o, a, b)| V::Bin(o, a.into(), b.into()))
                        .boxed(),
                    (0u8..3, inner.clone())
                        .prop_map(|(o, a)| V::Un(o, a.into()))
                        .boxed(),
                    (inner.clone(), inner.clone(), inner.clone())
                        .prop_map(|(a, b, c)| V::Madd(a.into(), b.into(), c.into()))
                        .boxed(),
                    (0u8..4, inner.clone(), f_expr())
                        .prop_map(|(l, v, f)| V::Replace(l, v.into(), f.into()))
                        .boxed(),
                ];
                options.push(
                    (inner.clone(), inner.clone())
                        .prop_map(|(a, b)| V::Int(a.into(), b.into()))
                        .boxed(),
                );
                options.push(
                    (0u8..4, inner.clone(), inner.clone())
                        .prop_map(|(c, a, b)| V::Select(c, a.into(), b.into()))
                        .boxed(),
                );
                options.push(
                    (inner.clone(), inner.clone())
                        .prop_map(|(a, b)| V::PMin(a.into(), b.into()))
                        .boxed(),
                );
                options.push(f_expr().prop_map(|f| V::SplatWide(f.into())).boxed());
                options.push(inner.prop_map(|v| V::Demote(v.into())).boxed());
                prop::strategy::Union::new(options)
            })
            .boxed()
    }

    /// A statement inside `loops` loops (at most two deep).
    fn statement(loops: u8) -> BoxedStrategy<S> {
        let simple = prop_oneof![
            (0u8..2, f_expr()).prop_map(|(k, e)| S::SetF(k, e)),
            (0u8..2, v_expr()).prop_map(|(k, e)| S::SetV(k, e)),
            f_expr().prop_map(S::StoreF),
            v_expr().prop_map(S::StoreV),
        ]
        .boxed();
        let inner = simple.clone();
        let nested = move || prop::collection::vec(inner.clone(), 0..4);
        let mut options = vec![
            simple,
            (0u8..4, nested(), nested())
                .prop_map(|(c, a, b)| S::If(c, a, b))
                .boxed(),
            (0u8..4, nested(), nested())
                .prop_map(|(c, a, b)| S::Exit(c, a, b))
                .boxed(),
            (0u8..4, nested())
                .prop_map(|(c, a)| S::Switch(c, a))
                .boxed(),
        ];
        if loops < 2 {
            options.push(
                prop::collection::vec(statement(loops + 1), 0..4)
                    .prop_map(S::Loop)
                    .boxed(),
            );
        }
        prop::strategy::Union::new(options).boxed()
    }

    /// Compiles a program: param 0 (i32) picks branches by its bits; locals 1–2 f32, 3–4
    /// v128, 5 and 9 loop counters, 6 the store cursor (bytes from 256), 7–8 a store's value.
    struct Gen {
        body: Vec<I<'static>>,
        /// Loops open around the code being written.
        loops: u32,
    }

    impl Gen {
        fn cond(&mut self, bit: u8) {
            self.body
                .extend([I::LocalGet(0), I::I32Const(1 << bit), I::I32And]);
        }

        fn f(&mut self, e: &F) {
            match e {
                F::Load(i) => self
                    .body
                    .extend([I::I32Const(0), I::F32Load(mem(u64::from(*i) * 4))]),
                F::Const(x) => self.body.push(f32c(*x)),
                F::Get(k) => self.body.push(I::LocalGet(1 + u32::from(*k))),
                F::Bin(o, a, b) => {
                    self.f(a);
                    self.f(b);
                    self.body.push(
                        [
                            I::F32Add,
                            I::F32Sub,
                            I::F32Mul,
                            I::F32Div,
                            I::F32Min,
                            I::F32Max,
                        ][*o as usize]
                            .clone(),
                    );
                }
                F::Un(o, a) => {
                    self.f(a);
                    self.body
                        .push([I::F32Neg, I::F32Abs, I::F32Sqrt, I::F32Ceil][*o as usize].clone());
                }
                F::CopySign(a, b) => {
                    self.f(a);
                    self.f(b);
                    self.body.push(I::F32Copysign);
                }
                F::Extract(l, v) => {
                    self.v(v);
                    self.body.push(I::F32x4ExtractLane(*l));
                }
                F::Select(c, a, b) => {
                    self.f(a);
                    self.f(b);
                    self.cond(*c);
                    self.body.push(I::Select);
                }
                F::If(c, a, b) => {
                    self.cond(*c);
                    self.body.push(I::If(BlockType::Result(T::F32)));
                    self.f(a);
                    self.body.push(I::Else);
                    self.f(b);
                    self.body.push(I::End);
                }
                F::BrIf(c, a, b) => {
                    self.body.push(I::Block(BlockType::Result(T::F32)));
                    self.f(a);
                    self.cond(*c);
                    self.body.extend([I::BrIf(0), I::Drop]);
                    self.f(b);
                    self.body.push(I::End);
                }
            }
        }

        fn v(&mut self, e: &V) {
            match e {
                V::Load(i) => self
                    .body
                    .extend([I::I32Const(0), I::V128Load(mem(u64::from(*i) * 16))]),
                V::Splat(f) => {
                    self.f(f);
                    self.body.push(I::F32x4Splat);
                }
                V::Get(k) => self.body.push(I::LocalGet(3 + u32::from(*k))),
                V::Bin(o, a, b) => {
                    self.v(a);
                    self.v(b);
                    self.body.push(
                        [
                            I::F32x4Add,
                            I::F32x4Mul,
                            I::F32x4Div,
                            I::F32x4Min,
                            I::F64x2Add,
                            I::F64x2Div,
                        ][*o as usize]
                            .clone(),
                    );
                }
                V::Un(o, a) => {
                    self.v(a);
                    self.body
                        .push([I::F32x4Neg, I::F64x2Neg, I::F32x4Abs][*o as usize].clone());
                }
                V::Madd(a, b, c) => {
                    self.v(a);
                    self.v(b);
                    self.v(c);
                    self.body.push(I::F32x4RelaxedMadd);
                }
                V::Int(a, b) => {
                    self.v(a);
                    self.v(b);
                    self.body.push(I::I32x4Add);
                }
                V::Replace(l, v, f) => {
                    self.v(v);
                    self.f(f);
                    self.body.push(I::F32x4ReplaceLane(*l));
                }
                V::Select(c, a, b) => {
                    self.v(a);
                    self.v(b);
                    self.cond(*c);
                    self.body.push(I::Select);
                }
                V::PMin(a, b) => {
                    self.v(a);
                    self.v(b);
                    self.body.push(I::F32x4PMin);
                }
                V::SplatWide(f) => {
                    self.f(f);
                    self.body.extend([I::F64PromoteF32, I::F64x2Splat]);
                }
                V::Demote(v) => {
                    self.v(v);
                    self.body.push(I::F32x4DemoteF64x2Zero);
                }
            }
        }

        fn store(&mut self, ty: T) {
            // value on the stack; address = cursor; cursor += 16.
            let local = if ty == T::F32 { 7 } else { 8 };
            self.body.extend([
                I::LocalSet(local),
                I::LocalGet(6),
                I::LocalGet(local),
                if ty == T::F32 {
                    I::F32Store(mem(256))
                } else {
                    I::V128Store(mem(256))
                },
                I::LocalGet(6),
                I::I32Const(16),
                I::I32Add,
                I::I32Const(511),
                I::I32And,
                I::LocalSet(6),
            ]);
        }

        fn s(&mut self, s: &S) {
            match s {
                S::SetF(k, e) => {
                    self.f(e);
                    self.body.push(I::LocalSet(1 + u32::from(*k)));
                }
                S::SetV(k, e) => {
                    self.v(e);
                    self.body.push(I::LocalSet(3 + u32::from(*k)));
                }
                S::StoreF(e) => {
                    self.f(e);
                    self.store(T::F32);
                }
                S::StoreV(e) => {
                    self.v(e);
                    self.store(T::V128);
                }
                S::If(c, a, b) => {
                    self.cond(*c);
                    self.body.push(I::If(BlockType::Empty));
                    a.iter().for_each(|s| self.s(s));
                    self.body.push(I::Else);
                    b.iter().for_each(|s| self.s(s));
                    self.body.push(I::End);
                }
                S::Loop(body) => {
                    // The counter: local 5 for an outer loop, 9 for one inside it.
                    let counter = if self.loops == 0 { 5 } else { 9 };
                    self.loops += 1;
                    self.body.extend([
                        I::I32Const(3),
                        I::LocalSet(counter),
                        I::Loop(BlockType::Empty),
                    ]);
                    body.iter().for_each(|s| self.s(s));
                    self.body.extend([
                        I::LocalGet(counter),
                        I::I32Const(1),
                        I::I32Sub,
                        I::LocalTee(counter),
                        I::BrIf(0),
                        I::End,
                    ]);
                    self.loops -= 1;
                }
                S::Exit(c, a, b) => {
                    self.body.push(I::Block(BlockType::Empty));
                    a.iter().for_each(|s| self.s(s));
                    self.cond(*c);
                    self.body.push(I::BrIf(0));
                    b.iter().for_each(|s| self.s(s));
                    self.body.push(I::End);
                }
                S::Switch(c, a) => {
                    self.body
                        .extend([I::Block(BlockType::Empty), I::Block(BlockType::Empty)]);
                    self.cond(*c);
                    self.body.extend([I::BrTable(vec![0].into(), 1), I::End]);
                    a.iter().for_each(|s| self.s(s));
                    self.body.push(I::End);
                }
            }
        }
    }

    fn program(statements: &[S]) -> Vec<u8> {
        let mut g = Gen {
            body: Vec::new(),
            loops: 0,
        };
        statements.iter().for_each(|s| g.s(s));
        // Every local goes out at the end.
        for (local, ty) in [(1, T::F32), (2, T::F32), (3, T::V128), (4, T::V128)] {
            g.body.push(I::LocalGet(local));
            g.store(ty);
        }
        module(&[Func {
            params: vec![T::I32],
            results: vec![],
            locals: vec![
                T::F32,
                T::F32,
                T::V128,
                T::V128,
                T::I32,
                T::I32,
                T::F32,
                T::V128,
                T::I32,
            ],
            body: g.body,
        }])
    }

    fn inputs() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                Just(0x7fa0_0001u32),
                Just(0xffe0_0001),
                Just(0x7f80_0000),
                Just(0x0000_0000),
                Just(0x8000_0000),
                any::<u32>(),
                (0u32..1000).prop_map(|x| (x as f32 / 7.0).to_bits()),
            ],
            8,
        )
        .prop_map(|words| words.iter().flat_map(|x| x.to_le_bytes()).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// The rewritten module, run as x86 makes NaNs (negative, payloads carried), gives the
        /// bits the module as written gives with wasmtime's canonicalization after every
        /// operation; and so does the rewritten module run with that canonicalization, which
        /// stands in for a CPU that makes other NaNs.
        #[test]
        fn rewritten_programs_give_the_bits_canonicalization_gives(
            statements in prop::collection::vec(statement(0), 1..8),
            memory in inputs(),
        ) {
            let wasm = program(&statements);
            let out = rewritten(&wasm);
            let (canonicalizing, plain) = (engine(true), engine(false));
            for arg in 0..16 {
                let (_, want) = run(&canonicalizing, &wasm, "f0", &[Val::I32(arg)], &memory);
                let (_, got) = run(&plain, &out, "f0", &[Val::I32(arg)], &memory);
                let (_, other) = run(&canonicalizing, &out, "f0", &[Val::I32(arg)], &memory);
                prop_assert_eq!(&want[256..768], &got[256..768], "argument {}", arg);
                prop_assert_eq!(&got[256..768], &other[256..768], "argument {}", arg);
            }
        }
    }
}
