"""What a model card says about each method: name, paper, a paragraph, the prediction target, limitations, BibTeX.

Keyed by config `model_type`. Kept out of the modeling files, which are uploaded as remote code and should carry
only what loading needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class MethodCard:
    name: str  # display name
    tag: str  # the Hub tag, also the `hf-mim pretrain --method` name
    paper_title: str
    paper_url: str
    paragraph: str
    bibtex: str
    limitations: tuple[str, ...] = field(default_factory=tuple)


def target_description(config) -> str:
    """The prediction target, in words, for the architecture table."""
    model_type = config.model_type
    if model_type in ("hf_mim_mae", "hf_mim_rmae"):
        pixels = "per-patch normalised pixels (`norm_pix_loss`)" if config.norm_pix_loss else "raw pixels"
        if model_type == "hf_mim_rmae":
            return f"decoder output of the full image on masked patches, plus autoencoding of {pixels}"
        return f"{pixels} of masked patches, mean squared error"
    if model_type == "hf_mim_simmim":
        return "raw (normalised-input) pixels of masked patches, L1"
    if model_type == "hf_mim_beit":
        return f"discrete visual-token ids of masked patches (vocabulary {config.vocab_size}), cross-entropy"
    if model_type == "hf_mim_cmae":
        return f"EMA-teacher patch features of the other view ({config.loss})"
    if model_type == "hf_mim_adios":
        return f"{config.objective} similarity between an image and its adversarially occluded view"
    if model_type == "hf_mim_visual_tokenizer":
        return f"pixels, through a {config.vocab_size}-code {config.quantizer} bottleneck"
    return "unknown"


_MAE_BIB = """@inproceedings{he2022masked,
  title     = {Masked Autoencoders Are Scalable Vision Learners},
  author    = {He, Kaiming and Chen, Xinlei and Xie, Saining and Li, Yanghao and Doll{\\'a}r, Piotr and Girshick, Ross},
  booktitle = {CVPR},
  year      = {2022}
}"""
_KONG_BIB = """@article{kong2022understanding,
  title   = {Understanding Masked Image Modeling via Learning Occlusion Invariant Feature},
  author  = {Kong, Xiangwen and Zhang, Xiangyu},
  journal = {arXiv preprint arXiv:2208.04164},
  year    = {2022}
}"""
_BEIT_BIB = """@inproceedings{bao2022beit,
  title     = {{BEiT}: {BERT} Pre-Training of Image Transformers},
  author    = {Bao, Hangbo and Dong, Li and Piao, Songhao and Wei, Furu},
  booktitle = {ICLR},
  year      = {2022}
}"""
_SMALL_DATA = (
    "Pretrained without labels: the features need a probe or fine-tuning for any downstream task, and they reflect "
    "the pretraining images only (domain, resolution, biases)."
)

METHOD_CARDS: dict[str, MethodCard] = {
    "hf_mim_mae": MethodCard(
        name="MAE",
        tag="mae",
        paper_title="Masked Autoencoders Are Scalable Vision Learners (He et al., 2021)",
        paper_url="https://arxiv.org/abs/2111.06377",
        paragraph=(
            "A masked autoencoder hides a large random subset of the image's patches, encodes only the visible "
            "ones with a Vision Transformer, and a lightweight decoder reconstructs the pixels of the hidden "
            "patches from the encoded tokens and mask tokens. The loss is the mean squared error on the masked "
            "patches. Only the encoder is used downstream."
        ),
        bibtex=_MAE_BIB,
        limitations=(
            "MAE features are known to need fine-tuning or a non-linear probe: linear-probe accuracy lags "
            "contrastive methods at equal compute.",
        ),
    ),
    "hf_mim_simmim": MethodCard(
        name="SimMIM",
        tag="simmim",
        paper_title="SimMIM: A Simple Framework for Masked Image Modeling (Xie et al., 2021)",
        paper_url="https://arxiv.org/abs/2111.09886",
        paragraph=(
            "SimMIM replaces the embeddings of masked patches with a learnable mask token, encodes every patch, "
            "and a one-layer head (1x1 convolution and pixel shuffle) predicts the pixels; the loss is the L1 "
            "error on the masked pixels."
        ),
        bibtex="""@inproceedings{xie2022simmim,
  title     = {SimMIM: A Simple Framework for Masked Image Modeling},
  author    = {Xie, Zhenda and Zhang, Zheng and Cao, Yue and Lin, Yutong and Bao, Jianmin and Yao, Zhuliang
               and Dai, Qi and Hu, Han},
  booktitle = {CVPR},
  year      = {2022}
}""",
    ),
    "hf_mim_beit": MethodCard(
        name="BEiT",
        tag="beit",
        paper_title="BEiT: BERT Pre-Training of Image Transformers (Bao et al., 2021)",
        paper_url="https://arxiv.org/abs/2106.08254",
        paragraph=(
            "BEiT maps every patch to a discrete visual token with a separately trained tokenizer, masks blocks "
            "of patches, and trains the Vision Transformer to predict the token ids of the masked patches with "
            "a cross-entropy loss, as BERT does for words."
        ),
        bibtex=_BEIT_BIB,
        limitations=(
            "The targets are only as good as the visual tokenizer they come from; hf_mim's BEiT has no relative "
            "position bias.",
        ),
    ),
    "hf_mim_cmae": MethodCard(
        name="C-MAE",
        tag="cmae",
        paper_title=(
            "Understanding Masked Image Modeling via Learning Occlusion Invariant Feature (Kong & Zhang, 2022)"
        ),
        paper_url="https://arxiv.org/abs/2208.04164",
        paragraph=(
            "C-MAE is the contrastive form of masked image modeling from Kong & Zhang's analysis of MIM as "
            "learning occlusion-invariant features: two colour-jittered, independently masked views of an image "
            "are encoded, and each patch's prediction from one view is matched to the exponential-moving-average "
            "teacher's projection of the same patch in the other view (token-wise InfoNCE or BYOL loss)."
        ),
        bibtex=_KONG_BIB,
    ),
    "hf_mim_rmae": MethodCard(
        name="R-MAE",
        tag="rmae",
        paper_title=(
            "Understanding Masked Image Modeling via Learning Occlusion Invariant Feature (Kong & Zhang, 2022)"
        ),
        paper_url="https://arxiv.org/abs/2208.04164",
        paragraph=(
            "R-MAE (RelaxMIM) puts MAE's encoder and decoder in siamese form: the reconstruction of the masked "
            "view is pulled towards the (stop-gradient) reconstruction of the full image on the masked patches, "
            "and the full image is autoencoded, so the encoder learns features invariant to occlusion."
        ),
        bibtex=_KONG_BIB + "\n\n" + _MAE_BIB,
    ),
    "hf_mim_adios": MethodCard(
        name="ADIOS",
        tag="adios",
        paper_title="Adversarial Masking for Self-Supervised Learning (Shi et al., ICML 2022)",
        paper_url="https://arxiv.org/abs/2201.13100",
        paragraph=(
            "ADIOS trains an occlusion model (a U-Net) adversarially against the image encoder: the occlusion "
            "model splits each image into soft masks, the encoder minimises a SimCLR, BYOL or SimSiam objective "
            "between an image and its masked versions, and the occlusion model maximises it under a sparsity "
            "penalty that keeps every mask from being empty or full."
        ),
        bibtex="""@inproceedings{shi2022adversarial,
  title     = {Adversarial Masking for Self-Supervised Learning},
  author    = {Shi, Yuge and Siddharth, N. and Torr, Philip H. S. and Kosiorek, Adam R.},
  booktitle = {ICML},
  year      = {2022}
}""",
        limitations=(
            "The checkpoint's encoder is what transfers; the occlusion model is kept in the weights for "
            "continued training and for mask pictures.",
        ),
    ),
    "hf_mim_visual_tokenizer": MethodCard(
        name="Visual tokenizer",
        tag="visual-tokenizer",
        paper_title="Neural Discrete Representation Learning (van den Oord et al., 2017), as used by BEiT",
        paper_url="https://arxiv.org/abs/1711.00937",
        paragraph=(
            "A convolutional autoencoder with one discrete code per Vision Transformer patch (an EMA vector "
            "quantizer or DALL-E's Gumbel-softmax relaxation). Its token ids are the prediction targets of "
            "BEiT-style pretraining."
        ),
        bibtex="""@inproceedings{vandenoord2017neural,
  title     = {Neural Discrete Representation Learning},
  author    = {van den Oord, Aaron and Vinyals, Oriol and Kavukcuoglu, Koray},
  booktitle = {NeurIPS},
  year      = {2017}
}

"""
        + _BEIT_BIB,
        limitations=("It is an image tokenizer, not a feature extractor: use its `token_ids`, not pooled features.",),
    ),
}

GENERAL_LIMITATIONS = (_SMALL_DATA,)


def method_card(model_type: str) -> MethodCard:
    try:
        return METHOD_CARDS[model_type]
    except KeyError:
        raise ValueError(
            f"model_type={model_type!r} has no model-card description; known: {sorted(METHOD_CARDS)}"
        ) from None
