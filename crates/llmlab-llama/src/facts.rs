//! A GGUF file's facts about itself, from its metadata only (the tensors
//! are not read): architecture, size label, quantization, trained context
//! and chat template.

use llama_cpp_2::gguf::GgufContext;

use llmlab_core::registry::ModelSpec;
use llmlab_core::service::ModelFacts;

use crate::memory::{number, string};

/// llama.cpp's `general.file_type` values (`enum llama_ftype`) by name,
/// for the types GGUF files on hubs use.
fn file_type_name(file_type: u64) -> Option<&'static str> {
    Some(match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4",
        _ => return None,
    })
}

/// The facts of a GGUF model; an unreadable file has none (loading it
/// is what reports why).
pub fn describe(spec: &ModelSpec) -> ModelFacts {
    let template = spec.backend.llama().and_then(|l| l.chat_template.clone());
    let Some(gguf) = GgufContext::from_file(&spec.path) else {
        return ModelFacts {
            chat_template: template,
            ..ModelFacts::default()
        };
    };
    let architecture = string(&gguf, "general.architecture").map(str::to_owned);
    let trained_context = architecture
        .as_deref()
        .and_then(|arch| number(&gguf, &format!("{arch}.context_length")));
    ModelFacts {
        parameter_size: string(&gguf, "general.size_label").map(str::to_owned),
        quantization: number(&gguf, "general.file_type")
            .and_then(file_type_name)
            .map(str::to_owned),
        trained_context,
        chat_template: template.or_else(|| {
            string(&gguf, "tokenizer.chat_template")
                .filter(|t| !t.trim().is_empty())
                .map(str::to_owned)
        }),
        architecture,
    }
}
