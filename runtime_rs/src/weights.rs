//! The weights container: `manifest.json` + `weights-NN.bin` shards (docs/formats.md), parsed and
//! checked before use.
//!
//! The compiled model says which tensors it needs (`TensorSpec`: name, shape, int8 packing); the
//! manifest must describe exactly those, every chunk must lie inside its shard, and every shard
//! must have the manifest's size, SHA-256, magic, version and index. Storage is allocated from the
//! *compiled* shapes, never from numbers in the input, so a hostile manifest cannot make us
//! allocate or index anything out of range. Every problem is an `Err(message)`, never a panic.
//!
//! Shards are added one at a time (`add_shard`) so a browser holds at most one shard beside the
//! weights.

use std::collections::HashMap;
use crate::json::{self, Json};
use crate::pages::{Movable, Stored};
use crate::sha256;

pub const MAGIC: &[u8; 8] = b"MONOLOGW";
pub const VERSION: u32 = 1;
pub const HEADER: usize = 16;
/// A manifest larger than this is refused before parsing (a real one is a few hundred KiB).
const MAX_MANIFEST: usize = 64 << 20;

/// What the compiled code expects of one weight.
#[derive(Debug, Clone, Copy)]
pub struct TensorSpec {
    pub name: &'static str,
    pub shape: &'static [usize],
    /// `Some((k_pad, group, bits))` for int8 (bits 8) and int4 (bits 4) weights
    /// (`groups = k_pad / group`), None for f32.
    pub q8: Option<(usize, usize, u32)>,
}

/// A loaded weight.
#[derive(Debug, Clone)]
pub enum Tensor {
    /// int8 or int4 (`bits`) (N, k_pad), scales (N, groups): value = q * scale[row][col / group].
    /// Row-major as loaded (int4: two values per byte, docs/formats.md), `layout` Rows; `finish`
    /// puts them in the layout the kernels read (kernels::layout_for; kernels::q_value and
    /// kernels::scale_index find a value and its scale).
    Q8 { n: usize, k: usize, k_pad: usize, group: usize, bits: u32, layout: crate::kernels::Layout, q: Stored<i8>, scale: Stored<f32> },
    F32 { data: Stored<f32> },
}

impl Tensor {
    pub fn f32(&self) -> &[f32] {
        match self {
            Tensor::F32 { data } => data,
            Tensor::Q8 { .. } => &[],
        }
    }
}

#[derive(Debug, Clone)]
struct Chunk {
    tensor: usize,
    part: Part,
    shard: usize,
    offset: usize,
    nbytes: usize,
    /// element offset of the chunk's first element inside the destination array
    dst: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Part {
    Q,
    Scale,
    Data,
}

#[derive(Debug, Clone)]
struct FileEntry {
    path: String,
    bytes: usize,
    sha256: String,
}

/// A manifest that passed every check, with storage allocated and shards still to add.
pub struct Loader {
    pub tensors: Vec<Tensor>,
    shards: Vec<FileEntry>,
    loaded: Vec<bool>,
    /// sorted by shard; `by_shard[i]` is the range of shard i's chunks
    chunks: Vec<Chunk>,
    by_shard: Vec<std::ops::Range<usize>>,
    tokenizer: FileEntry,
    pub config: Json,
    pub special_tokens: Vec<(String, u32)>,
}

fn get<'a>(j: &'a Json, key: &str, what: &str) -> Result<&'a Json, String> {
    j.get(key).ok_or_else(|| format!("manifest: {} has no \"{}\"", what, key))
}

fn as_usize(j: &Json, what: &str) -> Result<usize, String> {
    j.as_u32().map(|v| v as usize).ok_or_else(|| format!("manifest: {} must be a non-negative integer", what))
}

fn as_str<'a>(j: &'a Json, what: &str) -> Result<&'a str, String> {
    j.as_str().ok_or_else(|| format!("manifest: {} must be a string", what))
}

fn as_list<'a>(j: &'a Json, what: &str) -> Result<&'a [Json], String> {
    match j {
        Json::Array(items) => Ok(items),
        _ => Err(format!("manifest: {} must be a list", what)),
    }
}

fn usize_list(j: &Json, what: &str) -> Result<Vec<usize>, String> {
    as_list(j, what)?.iter().map(|v| as_usize(v, what)).collect()
}

impl Loader {
    /// Parse and check the manifest against what the compiled model needs.
    pub fn new(manifest: &[u8], specs: &[TensorSpec]) -> Result<Loader, String> {
        if manifest.len() > MAX_MANIFEST {
            return Err("manifest: larger than 64 MiB".to_string());
        }
        let text = std::str::from_utf8(manifest).map_err(|_| "manifest: not UTF-8".to_string())?;
        let doc = json::parse(text).map_err(|e| format!("manifest: {}", e))?;
        if doc.get("format").and_then(Json::as_str) != Some("monologue-model") {
            return Err("manifest: format is not \"monologue-model\"".to_string());
        }
        if doc.get("version").and_then(Json::as_u32) != Some(VERSION) {
            return Err(format!("manifest: version is not {}", VERSION));
        }
        // Maps, not searches: a manifest of many files, shards and tensors loads in time linear in its size.
        let mut files = HashMap::new();
        for f in as_list(get(&doc, "files", "the manifest")?, "files")? {
            let path = as_str(get(f, "path", "a file")?, "file path")?.to_string();
            let entry = FileEntry {
                path: path.clone(),
                bytes: as_usize(get(f, "bytes", "a file")?, "file bytes")?,
                sha256: as_str(get(f, "sha256", "a file")?, "file sha256")?.to_string(),
            };
            files.insert(path, entry);
        }
        let file = |path: &str| -> Result<FileEntry, String> {
            files.get(path).cloned().ok_or_else(|| format!("manifest: {} is not in files", path))
        };
        let tokenizer = file(as_str(get(&doc, "tokenizer", "the manifest")?, "tokenizer")?)?;
        let w = get(&doc, "weights", "the manifest")?;
        if w.get("magic").and_then(Json::as_str) != Some("MONOLOGW") {
            return Err("manifest: weights.magic is not MONOLOGW".to_string());
        }
        if w.get("header_bytes").and_then(Json::as_u32) != Some(HEADER as u32) {
            return Err("manifest: weights.header_bytes is not 16".to_string());
        }
        let mut shards = Vec::new();
        for s in as_list(get(w, "shards", "weights")?, "weights.shards")? {
            let entry = file(as_str(s, "shard name")?)?;
            if entry.bytes < HEADER {
                return Err(format!("manifest: shard {} is shorter than its header", entry.path));
            }
            shards.push(entry);
        }
        let tensors_json: HashMap<&str, &Json> = match get(w, "tensors", "weights")? {
            Json::Object(members) => members.iter().map(|(k, v)| (k.as_str(), v)).collect(),
            _ => return Err("manifest: weights.tensors is not an object".to_string()),
        };
        let mut tensors = Vec::with_capacity(specs.len());
        let mut chunks = Vec::new();
        for (ti, spec) in specs.iter().enumerate() {
            let t = *tensors_json.get(spec.name).ok_or_else(|| format!("manifest: tensor {} is missing", spec.name))?;
            let what = format!("tensor {}", spec.name);
            if usize_list(get(t, "shape", &what)?, "shape")? != spec.shape {
                return Err(format!("manifest: {} has a different shape than the compiled model", what));
            }
            let dtype = as_str(get(t, "dtype", &what)?, "dtype")?;
            let arrays = get(t, "arrays", &what)?;
            let tensor = match spec.q8 {
                Some((k_pad, group, bits)) => {
                    if dtype != "q8" {
                        return Err(format!("manifest: {} should be q8", what));
                    }
                    let quant = get(t, "quant", &what)?;
                    // manifests from before int4 have no "bits": they are int8
                    let stored_bits = match quant.get("bits") {
                        None => Some(8),
                        Some(b) => b.as_u32(),
                    };
                    if quant.get("k_pad").and_then(Json::as_u32) != Some(k_pad as u32)
                        || quant.get("group").and_then(Json::as_u32) != Some(group as u32)
                        || stored_bits != Some(bits)
                    {
                        return Err(format!("manifest: {} has a different int8 packing than the compiled model", what));
                    }
                    let (n, k) = (spec.shape[0], spec.shape[1]);
                    let groups = k_pad / group;
                    let q_words = k_pad * bits as usize / 32;
                    // u32 words of 4 int8 (8 int4) each: 4 bytes per word, q_words words per row
                    check_array(arrays, "q", "u32", &[n, q_words], ti, Part::Q, shards.len(), &shards, &mut chunks, &what)?;
                    check_array(arrays, "scale", "f32", &[n, groups], ti, Part::Scale, shards.len(), &shards, &mut chunks, &what)?;
                    Tensor::Q8 { n, k, k_pad, group, bits, layout: crate::kernels::Layout::Rows, q: Stored::zeroed(n * q_words * 4), scale: Stored::zeroed(n * groups) }
                }
                None => {
                    if dtype != "f32" {
                        return Err(format!("manifest: {} should be f32", what));
                    }
                    check_array(arrays, "data", "f32", spec.shape, ti, Part::Data, shards.len(), &shards, &mut chunks, &what)?;
                    Tensor::F32 { data: Stored::zeroed(spec.shape.iter().product()) }
                }
            };
            tensors.push(tensor);
        }
        // Arrays start aligned and never overlap: together with the bounds checks this makes the
        // layout a one-to-one map, so a shifted offset cannot silently read the wrong bytes.
        let align = w.get("alignment").and_then(Json::as_u32).unwrap_or(0) as usize;
        if align < 4 || !align.is_power_of_two() {
            return Err("manifest: weights.alignment must be a power of two >= 4".to_string());
        }
        let mut spans: Vec<(usize, usize, usize)> = chunks.iter().map(|c| (c.shard, c.offset, c.offset + c.nbytes)).collect();
        if chunks.iter().any(|c| c.offset % align != 0) {
            return Err(format!("manifest: a chunk offset is not a multiple of the alignment {}", align));
        }
        spans.sort_unstable();
        if spans.windows(2).any(|p| p[0].0 == p[1].0 && p[1].1 < p[0].2) {
            return Err("manifest: two weight chunks overlap".to_string());
        }
        let model = get(&doc, "model", "the manifest")?;
        let config = get(model, "config", "model")?.clone();
        let mut special_tokens = Vec::new();
        if let Some(Json::Object(members)) = doc.get("special_tokens") {
            for (name, id) in members {
                special_tokens.push((name.clone(), id.as_u32().ok_or("manifest: special token ids must be integers")?));
            }
        }
        let loaded = vec![false; shards.len()];
        chunks.sort_by_key(|c| c.shard);
        let mut by_shard = Vec::with_capacity(shards.len());
        let mut start = 0;
        for i in 0..shards.len() {
            let end = start + chunks[start..].iter().take_while(|c| c.shard == i).count();
            by_shard.push(start..end);
            start = end;
        }
        Ok(Loader { tensors, shards, loaded, chunks, by_shard, tokenizer, config, special_tokens })
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Check one shard (size, SHA-256, header) and copy its chunks into the tensors.
    pub fn add_shard(&mut self, index: usize, bytes: &[u8]) -> Result<(), String> {
        let entry = self.shards.get(index).ok_or_else(|| format!("shard {} is not in the manifest", index))?;
        if bytes.len() != entry.bytes {
            return Err(format!("{}: {} bytes, the manifest says {}", entry.path, bytes.len(), entry.bytes));
        }
        if sha256::hex(&sha256::sha256(bytes)) != entry.sha256 {
            return Err(format!("{}: sha256 differs from the manifest (corrupt or modified)", entry.path));
        }
        if &bytes[..8] != MAGIC {
            return Err(format!("{}: bad magic", entry.path));
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let shard_index = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        if version != VERSION || shard_index as usize != index {
            return Err(format!("{}: header says version {} shard {}, expected {} and {}", entry.path, version, shard_index, VERSION, index));
        }
        for c in &self.chunks[self.by_shard[index].clone()] {
            // bounds were checked against the manifest's shard size, which equals bytes.len()
            let src = bytes.get(c.offset..c.offset + c.nbytes).ok_or("chunk outside its shard")?;
            match (&mut self.tensors[c.tensor], c.part) {
                (Tensor::Q8 { q, .. }, Part::Q) => {
                    let q = q.get_mut().ok_or("weights added after loading finished")?;
                    let dst = q.get_mut(c.dst..c.dst + c.nbytes).ok_or("chunk outside its tensor")?;
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d = *s as i8;
                    }
                }
                (Tensor::Q8 { scale: out, .. }, Part::Scale) | (Tensor::F32 { data: out }, Part::Data) => {
                    let out = out.get_mut().ok_or("weights added after loading finished")?;
                    let dst = out.get_mut(c.dst..c.dst + c.nbytes / 4).ok_or("chunk outside its tensor")?;
                    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    }
                }
                _ => return Err("chunk of the wrong kind".to_string()),
            }
        }
        self.loaded[index] = true;
        Ok(())
    }

    /// Check the tokenizer.json bytes against the manifest (size and SHA-256).
    pub fn check_tokenizer(&self, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() != self.tokenizer.bytes || sha256::hex(&sha256::sha256(bytes)) != self.tokenizer.sha256 {
            return Err(format!("{}: size or sha256 differs from the manifest", self.tokenizer.path));
        }
        Ok(())
    }

    /// The tensors, once every shard is in.
    pub fn finish(self) -> Result<(Vec<Tensor>, Json, Vec<(String, u32)>), String> {
        if let Some(i) = self.loaded.iter().position(|l| !l) {
            return Err(format!("shard {} ({}) was not loaded", i, self.shards[i].path));
        }
        let mut tensors = self.tensors;
        for t in &mut tensors {
            if let Tensor::Q8 { n, k_pad, group, bits, layout, q, scale, .. } = t {
                use crate::kernels::{self, Layout};
                if *layout != Layout::Rows {
                    continue;
                }
                if *bits == 4 {
                    // the compiler packs int4 only in groups of 16 values or more
                    if !kernels::blocked_layout(*k_pad, *group) {
                        return Err(format!("an int4 weight has groups of {} (not a multiple of 16)", group));
                    }
                    if kernels::q4_holds_minus8(q) {
                        return Err("an int4 weight holds the value -8 (int4 weights are -7..7, docs/formats.md)".to_string());
                    }
                }
                *layout = kernels::layout_for(*bits, *n, *k_pad, *group);
                match (*layout, *bits) {
                    (Layout::Rows, _) => {}
                    (Layout::Lanes8, _) => {
                        *q = Stored::Own(kernels::block_rows_lanes8(q, *n, *k_pad));
                        *scale = Stored::Own(kernels::scales_by_block(scale, *n, *k_pad / *group, Layout::Lanes8));
                    }
                    (Layout::Blocks4, 4) => *q = Stored::Own(kernels::block_rows_q4(q, *n, *k_pad)),
                    (Layout::Blocks4, _) => kernels::block_rows(q.get_mut().ok_or("weights laid out twice")?, *n, *k_pad),
                }
            }
        }
        let mut parts: Vec<&mut dyn Movable> = Vec::new();
        for t in &mut tensors {
            match t {
                Tensor::Q8 { q, scale, .. } => {
                    parts.push(q);
                    parts.push(scale);
                }
                Tensor::F32 { data } => parts.push(data),
            }
        }
        crate::pages::gather(&mut parts);
        Ok((tensors, self.config, self.special_tokens))
    }
}

/// Check one array's description and record its chunks. The chunks must cover the rows
/// `[0, rows)` in order, each of exactly `(r1 - r0) * row_bytes` bytes, inside its shard.
#[allow(clippy::too_many_arguments)]
fn check_array(
    arrays: &Json,
    part_name: &str,
    dtype: &str,
    shape: &[usize],
    tensor: usize,
    part: Part,
    n_shards: usize,
    shards: &[FileEntry],
    chunks: &mut Vec<Chunk>,
    what: &str,
) -> Result<(), String> {
    let a = arrays.get(part_name).ok_or_else(|| format!("manifest: {} has no array {}", what, part_name))?;
    if a.get("dtype").and_then(Json::as_str) != Some(dtype) {
        return Err(format!("manifest: {} array {} should be {}", what, part_name, dtype));
    }
    if usize_list(get(a, "shape", what)?, "shape")? != shape {
        return Err(format!("manifest: {} array {} has the wrong shape", what, part_name));
    }
    let rows = if shape.is_empty() { 1 } else { shape[0] };
    let row_elems: usize = shape.iter().skip(1).product();
    let row_bytes = row_elems * 4;
    let mut next_row = 0usize;
    for c in as_list(get(a, "chunks", what)?, "chunks")? {
        let shard = as_usize(get(c, "shard", what)?, "chunk shard")?;
        let offset = as_usize(get(c, "offset", what)?, "chunk offset")?;
        let nbytes = as_usize(get(c, "nbytes", what)?, "chunk nbytes")?;
        let r = usize_list(get(c, "rows", what)?, "chunk rows")?;
        if shard >= n_shards {
            return Err(format!("manifest: {} chunk names shard {} of {}", what, shard, n_shards));
        }
        if r.len() != 2 || r[0] != next_row || r[1] <= r[0] || r[1] > rows {
            return Err(format!("manifest: {} chunk rows do not tile the array", what));
        }
        if nbytes != (r[1] - r[0]) * row_bytes {
            return Err(format!("manifest: {} chunk has {} bytes for {} rows", what, nbytes, r[1] - r[0]));
        }
        if offset < HEADER || offset.checked_add(nbytes).map_or(true, |end| end > shards[shard].bytes) {
            return Err(format!("manifest: {} chunk lies outside shard {}", what, shard));
        }
        // destination in elements: int8 for q (4 per u32 word), f32 otherwise
        let dst = if part == Part::Q { r[0] * row_bytes } else { r[0] * row_elems };
        chunks.push(Chunk { tensor, part, shard, offset, nbytes, dst });
        next_row = r[1];
    }
    if next_row != rows {
        return Err(format!("manifest: {} array {} chunks cover {} of {} rows", what, part_name, next_row, rows));
    }
    Ok(())
}
