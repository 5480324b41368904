//! The pipe between a node and its engine workers: length-prefixed frames, each one message.
//! I/O-free: [`Request`] and [`Reply`] encode to and decode from byte slices; decoding checks
//! every length against what is left and never panics, whichever side is compromised.
//!
//! A frame is a u32 little-endian payload length (at most [`MAX_FRAME`]) and the payload: a tag
//! byte, then the message's fields. Integers are little-endian; a string is a u32 length and
//! UTF-8 bytes; a byte string a u64 length and the bytes; a tensor its name, its dtype's OIP name,
//! a u32 rank, the u64 dims and its data as a byte string (the [`graph::Tensor`] encoding); a spec
//! its name, dtype and rank, then per dim a 0 and a u64 (fixed) or a 1 and a string (symbolic).

use graph::{DType, Dim, Spec, Tensor};

/// The largest frame either side sends or accepts, in bytes (1 GiB: a call's tensors are
/// bounded well below it by the sandbox's input limits).
pub const MAX_FRAME: usize = 1 << 30;

/// Most tensors or specs one message carries.
pub const MAX_TENSORS: usize = 4096;

/// Most dims one tensor or spec has.
pub const MAX_RANK: usize = 64;

/// A node's request to its worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Load this ONNX model (the worker holds one).
    Load {
        /// The model file's bytes.
        model: Vec<u8>,
    },
    /// Run the loaded model on these inputs.
    Run {
        /// The inputs, checked by the node against the model's specs.
        inputs: Vec<Tensor>,
    },
}

/// How a worker's request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The inputs do not fit the model.
    Invalid,
    /// The engine or the model could not be loaded.
    Load,
    /// The model failed while running.
    Run,
}

/// A worker's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The first frame a worker sends once its engine is up and it is confined.
    Hello {
        /// The engine (`onnxruntime`, `onnxruntime-cuda`, `tract-native`).
        engine: String,
        /// The engine's version.
        version: String,
        /// What confinement the kernel granted, in words.
        confinement: String,
    },
    /// The model loaded.
    Loaded {
        /// Its inputs.
        inputs: Vec<Spec>,
        /// Its outputs.
        outputs: Vec<Spec>,
    },
    /// The model ran.
    Outputs(Vec<Tensor>),
    /// The request failed (the worker goes on).
    Failed {
        /// How.
        failure: Failure,
        /// Why, for the caller.
        message: String,
    },
}

/// A frame or message that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed engine frame: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// The frame header for a payload of `len` bytes, or an error above [`MAX_FRAME`].
pub fn header(len: usize) -> Result<[u8; 4], Malformed> {
    if len > MAX_FRAME {
        return Err(Malformed(format!(
            "a frame of {len} bytes is above the limit of {MAX_FRAME}"
        )));
    }
    Ok((len as u32).to_le_bytes())
}

/// The payload length a frame header announces, checked against [`MAX_FRAME`].
pub fn payload_len(header: [u8; 4]) -> Result<usize, Malformed> {
    let len = u32::from_le_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(Malformed(format!(
            "a frame of {len} bytes is above the limit of {MAX_FRAME}"
        )));
    }
    Ok(len)
}

impl Request {
    /// The message's payload (without the frame header).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Request::Load { model } => {
                out.push(1);
                put_bytes(&mut out, model);
            }
            Request::Run { inputs } => {
                out.push(2);
                put_tensors(&mut out, inputs);
            }
        }
        out
    }

    /// Decodes a payload.
    pub fn decode(payload: &[u8]) -> Result<Request, Malformed> {
        let mut r = Reader(payload);
        let message = match r.u8()? {
            1 => Request::Load {
                model: r.bytes()?.to_vec(),
            },
            2 => Request::Run {
                inputs: r.tensors()?,
            },
            t => return Err(Malformed(format!("unknown request tag {t}"))),
        };
        r.end()?;
        Ok(message)
    }
}

impl Reply {
    /// The message's payload (without the frame header).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Reply::Hello {
                engine,
                version,
                confinement,
            } => {
                out.push(1);
                put_str(&mut out, engine);
                put_str(&mut out, version);
                put_str(&mut out, confinement);
            }
            Reply::Loaded { inputs, outputs } => {
                out.push(2);
                put_specs(&mut out, inputs);
                put_specs(&mut out, outputs);
            }
            Reply::Outputs(tensors) => {
                out.push(3);
                put_tensors(&mut out, tensors);
            }
            Reply::Failed { failure, message } => {
                out.push(4);
                out.push(match failure {
                    Failure::Invalid => 0,
                    Failure::Load => 1,
                    Failure::Run => 2,
                });
                put_str(&mut out, message);
            }
        }
        out
    }

    /// Decodes a payload.
    pub fn decode(payload: &[u8]) -> Result<Reply, Malformed> {
        let mut r = Reader(payload);
        let message = match r.u8()? {
            1 => Reply::Hello {
                engine: r.str()?,
                version: r.str()?,
                confinement: r.str()?,
            },
            2 => Reply::Loaded {
                inputs: r.specs()?,
                outputs: r.specs()?,
            },
            3 => Reply::Outputs(r.tensors()?),
            4 => Reply::Failed {
                failure: match r.u8()? {
                    0 => Failure::Invalid,
                    1 => Failure::Load,
                    2 => Failure::Run,
                    k => return Err(Malformed(format!("unknown failure kind {k}"))),
                },
                message: r.str()?,
            },
            t => return Err(Malformed(format!("unknown reply tag {t}"))),
        };
        r.end()?;
        Ok(message)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_tensors(out: &mut Vec<u8>, tensors: &[Tensor]) {
    out.extend_from_slice(&(tensors.len() as u32).to_le_bytes());
    for t in tensors {
        put_str(out, &t.name);
        put_str(out, t.dtype.name());
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in &t.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        put_bytes(out, &t.data);
    }
}

fn put_specs(out: &mut Vec<u8>, specs: &[Spec]) {
    out.extend_from_slice(&(specs.len() as u32).to_le_bytes());
    for s in specs {
        put_str(out, &s.name);
        put_str(out, s.dtype.name());
        out.extend_from_slice(&(s.shape.len() as u32).to_le_bytes());
        for d in &s.shape {
            match d {
                Dim::Fixed(n) => {
                    out.push(0);
                    out.extend_from_slice(&n.to_le_bytes());
                }
                Dim::Symbolic(name) => {
                    out.push(1);
                    put_str(out, name);
                }
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let (head, tail) = self
            .0
            .split_at_checked(n)
            .ok_or_else(|| Malformed(format!("{n} bytes wanted, {} left", self.0.len())))?;
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn str(&mut self) -> Result<String, Malformed> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| Malformed("a string is not UTF-8".into()))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = usize::try_from(self.u64()?)
            .map_err(|_| Malformed("a byte string longer than memory".into()))?;
        self.take(n)
    }

    fn count(&mut self, max: usize, what: &str) -> Result<usize, Malformed> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(Malformed(format!("{n} {what}, above the limit of {max}")));
        }
        Ok(n)
    }

    fn dtype(&mut self) -> Result<DType, Malformed> {
        let name = self.str()?;
        DType::from_name(&name).ok_or_else(|| Malformed(format!("unknown dtype {name:?}")))
    }

    fn tensors(&mut self) -> Result<Vec<Tensor>, Malformed> {
        let n = self.count(MAX_TENSORS, "tensors")?;
        let mut out = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let name = self.str()?;
            let dtype = self.dtype()?;
            let rank = self.count(MAX_RANK, "dims")?;
            let shape = (0..rank).map(|_| self.u64()).collect::<Result<_, _>>()?;
            let data = self.bytes()?.to_vec();
            out.push(Tensor {
                name,
                dtype,
                shape,
                data,
            });
        }
        Ok(out)
    }

    fn specs(&mut self) -> Result<Vec<Spec>, Malformed> {
        let n = self.count(MAX_TENSORS, "specs")?;
        let mut out = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let name = self.str()?;
            let dtype = self.dtype()?;
            let rank = self.count(MAX_RANK, "dims")?;
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(match self.u8()? {
                    0 => Dim::Fixed(self.u64()?),
                    1 => Dim::Symbolic(self.str()?),
                    k => return Err(Malformed(format!("unknown dim kind {k}"))),
                });
            }
            out.push(Spec { name, dtype, shape });
        }
        Ok(out)
    }

    fn end(&self) -> Result<(), Malformed> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Malformed(format!(
                "{} bytes after the message",
                self.0.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tensor() -> impl Strategy<Value = Tensor> {
        (
            "[a-z_]{0,12}",
            prop::sample::select(vec![DType::F32, DType::I64, DType::Bytes, DType::Bool]),
            prop::collection::vec(0u64..1 << 40, 0..5),
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(name, dtype, shape, data)| Tensor {
                name,
                dtype,
                shape,
                data,
            })
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            "[a-z_]{0,12}",
            prop::collection::vec(
                prop_oneof![
                    any::<u64>().prop_map(Dim::Fixed),
                    "[a-z]{0,6}".prop_map(Dim::Symbolic)
                ],
                0..5,
            ),
        )
            .prop_map(|(name, shape)| Spec {
                name,
                dtype: DType::F16,
                shape,
            })
    }

    fn reply() -> impl Strategy<Value = Reply> {
        prop_oneof![
            ("\\PC{0,8}", "\\PC{0,8}", "\\PC{0,8}").prop_map(|(engine, version, confinement)| {
                Reply::Hello {
                    engine,
                    version,
                    confinement,
                }
            }),
            (
                prop::collection::vec(spec(), 0..4),
                prop::collection::vec(spec(), 0..4)
            )
                .prop_map(|(inputs, outputs)| Reply::Loaded { inputs, outputs }),
            prop::collection::vec(tensor(), 0..4).prop_map(Reply::Outputs),
            (
                prop::sample::select(vec![Failure::Invalid, Failure::Load, Failure::Run]),
                "\\PC{0,16}"
            )
                .prop_map(|(failure, message)| Reply::Failed { failure, message }),
        ]
    }

    proptest! {
        #[test]
        fn replies_round_trip(r in reply()) {
            prop_assert_eq!(Reply::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn requests_round_trip(inputs in prop::collection::vec(tensor(), 0..4), model in prop::collection::vec(any::<u8>(), 0..64)) {
            let run = Request::Run { inputs };
            prop_assert_eq!(Request::decode(&run.encode()), Ok(run));
            let load = Request::Load { model };
            prop_assert_eq!(Request::decode(&load.encode()), Ok(load));
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = Reply::decode(&bytes);
            let _ = Request::decode(&bytes);
        }

        #[test]
        fn every_truncation_and_extension_is_refused(r in reply(), cut in any::<prop::sample::Index>()) {
            let bytes = r.encode();
            let at = cut.index(bytes.len());
            prop_assert!(Reply::decode(&bytes[..at]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(Reply::decode(&longer).is_err());
        }
    }

    #[test]
    fn a_huge_count_is_refused_before_allocating() {
        let mut payload = vec![3];
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Reply::decode(&payload).is_err());
        let mut payload = vec![1];
        payload.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(Request::decode(&payload).is_err());
        assert!(payload_len([0xff; 4]).is_err());
        assert_eq!(payload_len(header(12).expect("small")), Ok(12));
    }
}
