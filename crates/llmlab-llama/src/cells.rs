//! A prompt as the KV cache holds it: one cell per token, and one per
//! embedding of each image (an image becomes many cells, evaluated
//! together by the projector, never split).
//!
//! Cells and positions differ for M-RoPE models (Qwen2-VL and later): an
//! image takes as many cells as it has embeddings but advances the
//! position only by its grid's larger side, so everything after it sits at
//! a lower position than its cell index. Context limits count cells;
//! llama.cpp is given positions.

use llama_cpp_2::mtmd::MtmdInputChunks;
use llama_cpp_2::token::LlamaToken;

/// One KV cell's content, comparable across requests: the prefix cache
/// reuses cells that match the new prompt's, an image by its content id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cell {
    Token(LlamaToken),
    /// Embedding `offset` of the image whose content id starts with `key`.
    Media {
        key: u64,
        offset: u32,
    },
}

/// One image of a prompt, as mtmd tokenized it: the image's embeddings and
/// the marker text the projector wraps them in (`<start_of_image>`, ...),
/// evaluated together in calls of their own.
pub(crate) struct MediaUnit {
    pub chunks: MtmdInputChunks,
    /// Index of its first cell in the prompt.
    pub start: usize,
    pub cells: usize,
    /// How far it advances the position (`cells`, except for M-RoPE).
    pub positions: usize,
}

impl std::fmt::Debug for MediaUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaUnit")
            .field("start", &self.start)
            .field("cells", &self.cells)
            .field("positions", &self.positions)
            .finish_non_exhaustive()
    }
}

/// A tokenized prompt.
#[derive(Debug, Default)]
pub(crate) struct PromptCells {
    pub cells: Vec<Cell>,
    /// Its images, in order, by `start`.
    pub media: Vec<MediaUnit>,
}

impl PromptCells {
    pub fn from_tokens(tokens: Vec<LlamaToken>) -> Self {
        Self {
            cells: tokens.into_iter().map(Cell::Token).collect(),
            media: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Append an image unit whose cells carry `key`.
    pub fn push_media(&mut self, chunks: MtmdInputChunks, key: u64) {
        let cells = chunks.total_tokens();
        let positions = usize::try_from(chunks.total_positions()).unwrap_or(cells);
        let start = self.cells.len();
        self.cells
            .extend((0..cells as u32).map(|offset| Cell::Media { key, offset }));
        self.media.push(MediaUnit {
            chunks,
            start,
            cells,
            positions,
        });
    }

    /// The position llama.cpp gives cell `at` (of the prompt or of what is
    /// generated after it).
    pub fn position_of(&self, at: usize) -> i32 {
        let saved: usize = self
            .media
            .iter()
            .take_while(|unit| unit.start + unit.cells <= at)
            .map(|unit| unit.cells - unit.positions)
            .sum();
        (at - saved) as i32
    }

    /// The image that starts at cell `at`.
    pub fn media_at(&self, at: usize) -> Option<&MediaUnit> {
        self.media.iter().find(|unit| unit.start == at)
    }

    /// Token cells from `at` up to the next image or the end.
    pub fn text_run_from(&self, at: usize) -> usize {
        let end = self
            .media
            .iter()
            .map(|unit| unit.start)
            .find(|&start| start >= at)
            .unwrap_or(self.cells.len());
        end.saturating_sub(at)
    }

    /// `at`, or the start of the image `at` falls inside: a reused prefix
    /// never ends in the middle of an image.
    pub fn boundary_at_or_before(&self, at: usize) -> usize {
        self.media
            .iter()
            .find(|unit| unit.start < at && at < unit.start + unit.cells)
            .map_or(at, |unit| unit.start)
    }

    /// Cell `at` is a token (never an image's).
    pub fn token_at(&self, at: usize) -> Option<LlamaToken> {
        match self.cells.get(at) {
            Some(Cell::Token(token)) => Some(*token),
            _ => None,
        }
    }
}

/// The key that marks an image's cells: the first 16 hex digits of its
/// content id (a SHA-256), so equal images compare equal across requests.
pub(crate) fn media_key(id: &str) -> u64 {
    u64::from_str_radix(id.get(..16).unwrap_or(id), 16).unwrap_or_else(|_| {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        hasher.finish()
    })
}

/// Length of the prefix two cell lists share.
pub(crate) fn common_prefix(a: &[Cell], b: &[Cell]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
