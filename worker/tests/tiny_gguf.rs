//! The tiny random-weight GGUF from `rbee-testkit` loads in llama.cpp, tokenizes any text, generates, and
//! renders the ChatML chat template.

use std::num::NonZeroU32;

use anyhow::Context as _;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use rbee_testkit::gguf::{tiny_llama_in, TinyModelSpec};

#[test]
fn tiny_llama_loads_generates_and_renders_chatml() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = tiny_llama_in(dir.path())?;
    let size = std::fs::metadata(&path)?.len();
    assert!(size < 1 << 20, "tiny model is {size} bytes");

    let mut backend = LlamaBackend::init()?;
    backend.void_logs();
    let model = LlamaModel::load_from_file(&backend, &path, &LlamaModelParams::default())?;
    let spec = TinyModelSpec::default();
    assert_eq!(model.n_vocab(), i32::try_from(spec.vocab)?);
    assert_eq!(model.n_layer(), u32::try_from(spec.layers)?);
    assert_eq!(model.n_ctx_train(), spec.ctx);

    let params = LlamaContextParams::default().with_n_ctx(NonZeroU32::new(256)).with_n_threads(2);
    let mut ctx = model.new_context(&backend, params)?;

    // tokenizes: merges apply ("Ġworld" is one token), and arbitrary bytes round-trip
    let vocab = model.vocab();
    let prompt = vocab.tokenize(b"hello world", false, false);
    assert_eq!(prompt.len(), 2, "hello + Ġworld, got {prompt:?}");
    assert_eq!(vocab.detokenize(&prompt, false, false), b"hello world");
    let odd = "é\n\t💡 <|im_end|>".as_bytes();
    assert_eq!(vocab.detokenize(&vocab.tokenize(odd, false, false), false, false), odd);
    let special = vocab.tokenize(b"<|im_start|>user", false, true);
    assert_eq!(special[0].0, 1, "<|im_start|> parses as a special token");
    assert!(vocab.is_eog(vocab.eos()) && vocab.eos().0 == 2, "<|im_end|> ends generation");

    // prefill, then 10 greedy tokens
    let mut batch = LlamaBatch::new(64, 1);
    let last = i32::try_from(prompt.len())? - 1;
    for (i, &tok) in prompt.iter().enumerate() {
        batch.add(tok, i32::try_from(i)?, &[0], i32::try_from(i)? == last)?;
    }
    ctx.decode(&mut batch)?;
    let mut sampler = LlamaSampler::greedy();
    let mut out = Vec::new();
    for pos in last + 1..last + 11 {
        let tok = sampler.sample(&ctx, batch.n_tokens() - 1);
        sampler.accept(tok);
        if vocab.is_eog(tok) {
            break;
        }
        out.push(tok);
        batch.clear();
        batch.add(tok, pos, &[0], true)?;
        ctx.decode(&mut batch)?;
    }
    assert_eq!(out.len(), 10, "greedy decoding never picks an end-of-generation token: {out:?}");
    let text = vocab.detokenize(&out, false, false);
    let text = String::from_utf8(text).context("greedy output is printable ASCII")?;
    assert!(!text.is_empty());
    eprintln!("tiny model ({size} bytes) generated {:?} from {:?}", text, "hello world");

    // ChatML template from the model
    let tmpl = model.chat_template(None)?;
    let msgs = [LlamaChatMessage::new("user".into(), "hi there".into())?];
    let rendered = model.apply_chat_template(&tmpl, &msgs, true)?;
    assert!(rendered.contains("<|im_start|>user"), "{rendered}");
    assert_eq!(rendered, "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n");
    Ok(())
}
