"""Prompts longer than CLIP's window (77 tokens with its start and end marks). diffusers cuts such a
prompt there and logs a warning nobody reads, so the end of a long prompt (a template's lighting plus the
shop owner's own words) was silently dropped. Here the prompt's tokens are cut into windows of 75, each
encoded on its own as CLIP was trained (start mark, tokens, end mark, padding), and the encodings are laid
end to end: the UNet's cross-attention takes any number of tokens. The negative prompt is padded with
empty windows to the same length. SDXL's pooled embedding is its second encoder's, of the first window.

Prompts that fit one window are left to diffusers, so their pictures are exactly what they were.
"""

import torch


def window_count(pipe, text: str) -> int:
    """How many 75-token windows `text` needs with the pipeline's tokenizers (the most any of them needs)."""
    return max(len(_windows(pipe, tokenizer, text)) for tokenizer in _tokenizers(pipe))


@torch.no_grad()
def prompt_embeddings(pipe, prompt: str, negative_prompt: str, n: int) -> dict:
    """The pipeline's keyword arguments for `n` images of `prompt` against `negative_prompt`, whatever their
    length: `prompt_embeds` and `negative_prompt_embeds` (and SDXL's pooled pair) instead of the texts."""
    windows = max(window_count(pipe, prompt), window_count(pipe, negative_prompt))
    positive, pooled = _encode(pipe, prompt, windows)
    negative, negative_pooled = _encode(pipe, negative_prompt, windows)
    kwargs = {"prompt_embeds": positive.repeat(n, 1, 1), "negative_prompt_embeds": negative.repeat(n, 1, 1)}
    if pooled is not None:
        kwargs |= {"pooled_prompt_embeds": pooled.repeat(n, 1),
                   "negative_pooled_prompt_embeds": negative_pooled.repeat(n, 1)}
    return kwargs


def _tokenizers(pipe) -> list:
    return [t for t in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None)) if t is not None]


class _Quiet:
    """A tokenizer whose `tokenize` does not warn that a text is longer than the model takes ("... will result in
    indexing errors"): here the whole text is wanted, then cut into windows, so the warning would be false. For
    diffusers' maybe_convert_prompt, which tokenizes the whole prompt; the rest is the tokenizer's own."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name: str):
        return getattr(self._tokenizer, name)

    def tokenize(self, text: str, **kwargs) -> list[str]:
        return self._tokenizer.tokenize(text, verbose=False, **kwargs)


def _windows(pipe, tokenizer, text: str) -> list[list[int]]:
    if hasattr(pipe, "maybe_convert_prompt"):  # a token embedding of n vectors: `<s1>` is written `<s1> <s1>_1 ...`
        text = pipe.maybe_convert_prompt(text, _Quiet(tokenizer))
    # verbose=False: no false warning that the tokens are too many for the model, since they are cut into windows
    ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
    size = tokenizer.model_max_length - 2
    return [ids[i:i + size] for i in range(0, len(ids), size)] or [[]]


def _window_ids(pipe, tokenizer, text: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` rows of model_max_length token ids (each window between start and end marks, then padding),
    and their attention mask (1 but on the padding), as the tokenizer pads one window."""
    windows = _windows(pipe, tokenizer, text)
    windows += [[]] * (count - len(windows))
    size = tokenizer.model_max_length - 2
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [[tokenizer.bos_token_id, *w, tokenizer.eos_token_id] + [pad] * (size - len(w)) for w in windows]
    mask = [[1] * (len(w) + 2) + [0] * (size - len(w)) for w in windows]
    return torch.tensor(rows, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def _encode(pipe, text: str, count: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1, count x 77, features) as the pipeline's own encode_prompt makes for one window, and SDXL's pooled."""
    xl = getattr(pipe, "text_encoder_2", None) is not None
    encoders = [e for e in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
                if e is not None]
    per_encoder, pooled = [], None
    for tokenizer, encoder in zip(_tokenizers(pipe), encoders):
        ids, mask = (t.to(encoder.device) for t in _window_ids(pipe, tokenizer, text, count))
        if xl:  # SDXL: the penultimate layer of each encoder, side by side; the second one's projection pooled
            out = encoder(ids, output_hidden_states=True)
            hidden = out.hidden_states[-2]
            if out[0].ndim == 2:
                pooled = out[0][:1]
        else:  # SD 1.x/2.x: the last layer (its final norm applied), with a mask where the encoder wants one
            use_mask = getattr(encoder.config, "use_attention_mask", False)
            hidden = encoder(ids, attention_mask=mask if use_mask else None)[0]
        per_encoder.append(hidden)
    embeds = torch.cat(per_encoder, dim=-1)  # (count, 77, features)
    dtype = encoders[-1].dtype
    embeds = embeds.reshape(1, -1, embeds.shape[-1]).to(dtype)
    return embeds, pooled.to(dtype) if pooled is not None else None
