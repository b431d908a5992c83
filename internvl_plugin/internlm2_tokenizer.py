"""InternLM2's tokenizer without remote code: the checkpoint's SentencePiece `tokenizer.model`, read directly.

InternLM2 checkpoints name `tokenization_internlm2.InternLM2Tokenizer` in `auto_map`, Python shipped beside the
weights that has broken with new transformers releases. That class is a thin layer over SentencePiece, and the
official fine-tuning code uses it (`use_fast=False`). This one gives the same ids on transformers 4 and 5 with no
code from the checkpoint: transformers splits out the added tokens, each piece between them is
`SentencePieceProcessor.encode`d, and the BOS token goes first (`add_bos_token`, true in every InternLM2 config).
"""
import json
import os
import shutil
from typing import Any, Dict, List, Optional, Tuple

from transformers import PreTrainedTokenizer

VOCAB_FILE = 'tokenizer.model'
SPACE = '\u2581'  # SentencePiece's word-boundary mark
# tokenizer_class values (tokenizer_config.json) this class stands in for.
INTERNLM2_TOKENIZER_CLASSES = ('InternLM2Tokenizer', 'InternLM2TokenizerFast')
# What the released checkpoints' tokenizer_config.json says, and what a saved tokenizer says again, so that the
# official toolchain (remote code) reads a converted checkpoint as it reads the original.
OFFICIAL_IDENTITY = {
    'tokenizer_class': 'InternLM2Tokenizer',
    'auto_map': {'AutoTokenizer': ['tokenization_internlm2.InternLM2Tokenizer',
                                   'tokenization_internlm2_fast.InternLM2TokenizerFast']},
}


class InternLM2Tokenizer(PreTrainedTokenizer):
    """Named as the official class, so transformers sees the class tokenizer_config.json names."""

    vocab_files_names = {'vocab_file': VOCAB_FILE}
    model_input_names = ['input_ids', 'attention_mask']

    def __init__(self, vocab_file: Optional[str] = None, unk_token: str = '<unk>', bos_token: str = '<s>',
                 eos_token: str = '</s>', pad_token: str = '</s>', add_bos_token: bool = True,
                 add_eos_token: bool = False, clean_up_tokenization_spaces: bool = False,
                 sp_model_proto: Optional[bytes] = None, **kwargs) -> None:
        """`sp_model_proto`: a serialized SentencePiece model instead of `vocab_file` (tiny tokenizers built in
        memory); saving writes it as tokenizer.model."""
        import sentencepiece
        self.vocab_file = vocab_file
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        # The base class asks for the vocabulary while it registers the special tokens: load it first.
        self.sp_model = sentencepiece.SentencePieceProcessor()
        if sp_model_proto is not None:
            self.sp_model.LoadFromSerializedProto(sp_model_proto)
        else:
            self.sp_model.Load(vocab_file)
        self.official_identity = {key: kwargs.pop(key, value) for key, value in OFFICIAL_IDENTITY.items()}
        for key in ('decode_with_prefix_space', 'sp_model_kwargs'):
            kwargs.pop(key, None)  # options of the remote class that no released checkpoint changes
        super().__init__(unk_token=unk_token, bos_token=bos_token, eos_token=eos_token, pad_token=pad_token,
                         add_bos_token=add_bos_token, add_eos_token=add_eos_token,
                         clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self.sp_model.get_piece_size()

    def get_vocab(self) -> Dict[str, int]:
        vocab = {self.sp_model.IdToPiece(i): i for i in range(self.vocab_size)}
        vocab.update(self.added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> List[str]:
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        return self.sp_model.IdToPiece(index)

    def convert_tokens_to_string(self, tokens: List[str]) -> str:
        """SentencePiece decodes the runs between special tokens, which stay as written; a special token that
        follows text (or opens the sequence) gets a space before it, as the official class writes it."""
        special = set(self.all_special_tokens)
        text, run, after_special = '', [], False
        for token in tokens:
            if token in special:
                text += ('' if after_special else ' ') + self.sp_model.decode(run) + token
                run, after_special = [], True
            else:
                run.append(token)
                after_special = False
        text += self.sp_model.decode(run)
        return self.clean_up_tokenization(text)

    def build_inputs_with_special_tokens(self, token_ids_0: List[int],
                                         token_ids_1: Optional[List[int]] = None) -> List[int]:
        ids = ([self.bos_token_id] if self.add_bos_token else []) + token_ids_0 + (token_ids_1 or [])
        return ids + ([self.eos_token_id] if self.add_eos_token else [])

    def get_special_tokens_mask(self, token_ids_0: List[int], token_ids_1: Optional[List[int]] = None,
                                already_has_special_tokens: bool = False) -> List[int]:
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        bos = [1] if self.add_bos_token else []
        eos = [1] if self.add_eos_token else []
        return bos + [0] * len(token_ids_0) + [0] * len(token_ids_1 or []) + eos

    def save_vocabulary(self, save_directory: str, filename_prefix: Optional[str] = None) -> Tuple[str]:
        target = os.path.join(save_directory, (filename_prefix + '-' if filename_prefix else '') + VOCAB_FILE)
        if self.vocab_file is None or not os.path.isfile(self.vocab_file):
            with open(target, 'wb') as f:
                f.write(self.sp_model.serialized_model_proto())
        elif os.path.abspath(self.vocab_file) != os.path.abspath(target):
            shutil.copyfile(self.vocab_file, target)
        return (target,)

    def to_fast(self) -> Any:
        """The same tokenizer as a `tokenizers` BPE (tokenizer.json), for layouts read without any remote class
        (transformers' native InternVL). SentencePiece BPE ranks a merge by the merged piece's id; byte fallback and
        the dummy prefix are the model's own."""
        from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
        from transformers import PreTrainedTokenizerFast
        vocab = {self.sp_model.IdToPiece(i): i for i in range(self.vocab_size)}
        merges = sorted(((vocab[piece], vocab[piece[:cut]], vocab[piece[cut:]]), (piece[:cut], piece[cut:]))
                        for piece in vocab for cut in range(1, len(piece))
                        if piece[:cut] in vocab and piece[cut:] in vocab and not self.sp_model.IsControl(vocab[piece]))
        backend = Tokenizer(models.BPE(vocab, [pair for _, pair in merges], unk_token=self.unk_token, fuse_unk=True,
                                       byte_fallback=True))
        dummy_prefix = self.sp_model.encode('a', out_type=str)[0].startswith(SPACE)
        backend.normalizer = normalizers.Sequence(
            ([normalizers.Prepend(SPACE)] if dummy_prefix else []) + [normalizers.Replace(' ', SPACE)])
        backend.decoder = decoders.Sequence(
            [decoders.Replace(SPACE, ' '), decoders.ByteFallback(), decoders.Fuse()]
            + ([decoders.Strip(' ', 1, 0)] if dummy_prefix else []))
        if self.add_bos_token:
            backend.post_processor = processors.TemplateProcessing(
                single=f'{self.bos_token} $A', pair=f'{self.bos_token} $A $B',
                special_tokens=[(self.bos_token, self.bos_token_id)])
        added = [str(token) for _, token in sorted(self.added_tokens_decoder.items())]
        backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in added])
        named = (self.bos_token, self.eos_token, self.unk_token, self.pad_token)
        fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=self.bos_token,
                                       eos_token=self.eos_token, unk_token=self.unk_token,
                                       pad_token=self.pad_token,
                                       additional_special_tokens=[t for t in added if t not in named])
        fast.model_max_length = self.model_max_length
        return fast

    def save_pretrained(self, save_directory: str, *args: Any, **kwargs: Any) -> Tuple[str, ...]:
        """transformers' files, with tokenizer_config.json naming the official classes and the BOS / EOS settings
        again (transformers 5 leaves the latter out)."""
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        path = os.path.join(save_directory, 'tokenizer_config.json')
        with open(path, encoding='utf-8') as f:
            config = json.load(f)
        config.update(self.official_identity, add_bos_token=self.add_bos_token, add_eos_token=self.add_eos_token)
        with open(path, 'w', encoding='utf-8') as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
        return saved
