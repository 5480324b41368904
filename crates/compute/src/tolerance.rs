//! When two providers' outputs agree. Pure-wasm results are bit-exact on every machine (the
//! sandbox's determinism), so they are compared by their signed output hashes. A native engine
//! (tract-native, onnxruntime, a GPU) may differ across machines in the last bits of floats
//! (other SIMD paths, fused multiply-adds, reduction orders), so when either result names one,
//! outputs that hash differently are compared element by element instead:
//!
//! - names, datatypes and shapes must be equal, and so must every integer, boolean and BYTES
//!   element;
//! - a float pair agrees when both are NaN, both the same infinity, or
//!   `|a − b| ≤ atol + rtol × max(|a|, |b|)`, with `rtol` 1e-4 and `atol` 1e-5 for FP32 and FP64
//!   ([`FLOAT`]), 1e-2 and 1e-3 for FP16 and BF16 ([`HALF`]), whose 8–11-bit mantissas round
//!   sooner.
//!
//! A provider that returns outputs within these bounds of an honest one is not called a liar;
//! one beyond them is.

use protocol::DType;

/// Relative and absolute tolerance for one float width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Relative to the larger magnitude.
    pub rtol: f64,
    /// Absolute, for values near zero.
    pub atol: f64,
}

/// FP32 and FP64.
pub const FLOAT: Tolerance = Tolerance {
    rtol: 1e-4,
    atol: 1e-5,
};

/// FP16 and BF16.
pub const HALF: Tolerance = Tolerance {
    rtol: 1e-2,
    atol: 1e-3,
};

/// One output as a provider returned it.
#[derive(Debug, Clone, Copy)]
pub struct Output<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its element type.
    pub dtype: DType,
    /// Its shape.
    pub shape: &'a [u64],
    /// Its elements, little-endian (BYTES: a `u32` length before each).
    pub data: &'a [u8],
}

/// Whether `a` and `b` agree within the tolerances (see the module docs); otherwise where they
/// first differ.
pub fn agree(a: &[Output<'_>], b: &[Output<'_>]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{} outputs against {}", a.len(), b.len()));
    }
    for (x, y) in a.iter().zip(b) {
        if (x.name, x.dtype, x.shape) != (y.name, y.dtype, y.shape) {
            return Err(format!(
                "output {:?} {} {:?} against {:?} {} {:?}",
                x.name,
                x.dtype.name(),
                x.shape,
                y.name,
                y.dtype.name(),
                y.shape
            ));
        }
        let tolerance = match x.dtype {
            DType::F32 | DType::F64 => FLOAT,
            DType::F16 | DType::Bf16 => HALF,
            _ => {
                if x.data != y.data {
                    return Err(format!(
                        "output {:?}: {} elements differ",
                        x.name,
                        x.dtype.name()
                    ));
                }
                continue;
            }
        };
        let (xs, ys) = (floats(x)?, floats(y)?);
        if xs.len() != ys.len() {
            return Err(format!(
                "output {:?}: {} values against {}",
                x.name,
                xs.len(),
                ys.len()
            ));
        }
        for (i, (p, q)) in xs.iter().zip(&ys).enumerate() {
            if !close(*p, *q, tolerance) {
                return Err(format!(
                    "output {:?}: element {i} is {p} against {q} (beyond rtol {} and atol {})",
                    x.name, tolerance.rtol, tolerance.atol
                ));
            }
        }
    }
    Ok(())
}

fn close(p: f64, q: f64, t: Tolerance) -> bool {
    if p.is_nan() || q.is_nan() {
        return p.is_nan() && q.is_nan();
    }
    if p.is_infinite() || q.is_infinite() {
        return p == q;
    }
    (p - q).abs() <= t.atol + t.rtol * p.abs().max(q.abs())
}

/// A float output's elements as f64.
fn floats(o: &Output<'_>) -> Result<Vec<f64>, String> {
    let width = o.dtype.size().unwrap_or(4);
    if !o.data.len().is_multiple_of(width) {
        return Err(format!(
            "output {:?}: {} bytes of {}",
            o.name,
            o.data.len(),
            o.dtype.name()
        ));
    }
    Ok(o.data
        .chunks_exact(width)
        .map(|c| match o.dtype {
            DType::F64 => f64::from_le_bytes(c.try_into().unwrap_or([0; 8])),
            DType::F16 => f64::from(half::f16::from_le_bytes([c[0], c[1]])),
            DType::Bf16 => f64::from(half::bf16::from_le_bytes([c[0], c[1]])),
            _ => f64::from(f32::from_le_bytes(c.try_into().unwrap_or([0; 4]))),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn out<'a>(dtype: DType, shape: &'a [u64], data: &'a [u8]) -> Output<'a> {
        Output {
            name: "y",
            dtype,
            shape,
            data,
        }
    }

    #[test]
    fn floats_agree_within_the_tolerance_and_nothing_else_does() {
        let shape = [3];
        let honest = f32s(&[1.0, -2.5, 0.0]);
        let close = f32s(&[1.00005, -2.50001, 0.000_005]);
        let far = f32s(&[1.001, -2.5, 0.0]);
        let nan = f32s(&[f32::NAN, -2.5, 0.0]);
        let a = [out(DType::F32, &shape, &honest)];
        assert!(agree(&a, &[out(DType::F32, &shape, &close)]).is_ok());
        let e = agree(&a, &[out(DType::F32, &shape, &far)]).expect_err("beyond");
        assert!(e.contains("element 0"), "{e}");
        assert!(agree(&a, &[out(DType::F32, &shape, &nan)]).is_err());
        let both_nan = [out(DType::F32, &shape, &nan)];
        assert!(agree(&both_nan, &both_nan).is_ok());
        // Another shape, dtype or name is a disagreement whatever the bytes.
        assert!(agree(&a, &[out(DType::F32, &[1, 3], &honest)]).is_err());
        let mut renamed = out(DType::F32, &shape, &honest);
        renamed.name = "z";
        assert!(agree(&a, &[renamed]).is_err());
        assert!(agree(&a, &[]).is_err());
    }

    #[test]
    fn integers_and_bytes_must_be_equal() {
        let one: Vec<u8> = 1i64.to_le_bytes().to_vec();
        let two: Vec<u8> = 2i64.to_le_bytes().to_vec();
        let shape = [1];
        assert!(
            agree(
                &[out(DType::I64, &shape, &one)],
                &[out(DType::I64, &shape, &one)]
            )
            .is_ok()
        );
        assert!(
            agree(
                &[out(DType::I64, &shape, &one)],
                &[out(DType::I64, &shape, &two)]
            )
            .is_err()
        );
        let text = [1, 0, 0, 0, b'a'];
        let other = [1, 0, 0, 0, b'b'];
        assert!(
            agree(
                &[out(DType::Bytes, &shape, &text)],
                &[out(DType::Bytes, &shape, &other)]
            )
            .is_err()
        );
    }

    #[test]
    fn half_precision_gets_the_wider_tolerance() {
        let h = |v: f32| half::f16::from_f32(v).to_le_bytes().to_vec();
        let shape = [1];
        let (a, b) = (h(100.0), h(100.5));
        assert!(
            agree(
                &[out(DType::F16, &shape, &a)],
                &[out(DType::F16, &shape, &b)]
            )
            .is_ok()
        );
        let c = h(103.0);
        assert!(
            agree(
                &[out(DType::F16, &shape, &a)],
                &[out(DType::F16, &shape, &c)]
            )
            .is_err()
        );
    }
}
