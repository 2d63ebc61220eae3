"""A deterministic word-level tokenizer for the tiny VLM, trained offline with `tokenizers`.

Words and punctuation marks are tokens. Spaces are kept as a ``▁`` prefix on the following
word (Metaspace), so decoding restores the text exactly ("Who is this?", not "Who is this ?").
Whitespace runs collapse to one space and text around special tokens is stripped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS, IMAGE)
SPACE = "\u2581"

# LLaVA-1.5 style conversation: "USER: <image> question ASSISTANT: answer</s>". System text, if
# any, comes first. Content is a string or a list of {"type": "image"} / {"type": "text"} items.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set items = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set items = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for item in items if item['type'] == 'text' -%}{{- item['text'] + ' ' -}}{%- endfor -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- 'USER: ' -}}"
    "{%- for item in items -%}"
    "{%- if item['type'] == 'image' -%}{{- '<image> ' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] + ' ' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'ASSISTANT: ' -}}"
    "{%- for item in items if item['type'] == 'text' -%}{{- item['text'] -}}{%- endfor -%}"
    "{{- '</s> ' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


def _normalizer(lowercase: bool) -> normalizers.Normalizer:
    steps: list[normalizers.Normalizer] = [normalizers.NFKC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    steps += [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    return normalizers.Sequence(steps)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=True),
            pre_tokenizers.Punctuation(),
        ]
    )


def _words(texts: Iterable[str], norm: normalizers.Normalizer, pre: pre_tokenizers.PreTokenizer) -> set[str]:
    words: set[str] = set()
    for text in texts:
        words.update(piece for piece, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    return words


def train_word_tokenizer(
    texts: Iterable[str],
    *,
    lowercase: bool = False,
    extra_special_tokens: Sequence[str] = (),
    chat_template: str = CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over every word of ``texts``; ids: specials first, then sorted words.

    ``extra_special_tokens`` (e.g. Qwen2-VL's ``<|video_pad|>``) get ids right after the five
    fixed specials ``<pad> <unk> <s> </s> <image>``. Encoding adds ``<s>`` in front.
    """
    norm, pre = _normalizer(lowercase), _pre_tokenizer()
    specials = list(SPECIAL_TOKENS) + [t for t in extra_special_tokens if t not in SPECIAL_TOKENS]
    words = sorted(_words(texts, norm, pre) - set(specials))
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = norm
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        image_token=IMAGE,
        extra_special_tokens=[t for t in specials if t not in SPECIAL_TOKENS[:4]],
        chat_template=chat_template,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
