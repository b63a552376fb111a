# ruff: noqa: E501 - one method a line
"""Names and one-line descriptions of the registered methods, for `segssl methods`.

Plain data, so that listing the methods imports no torch (``segssl.methods`` imports every
method and with them torch: tens of seconds on a loaded machine). A test keeps it equal to
``{name: describe(cls) for name, cls in segssl.methods.REGISTRY.items()}``; after adding a
method, add its line here (the test's failure prints the lines expected).
"""

from __future__ import annotations

METHODS: dict[str, str] = {
    "baseline": "Cross-entropy (optionally + Dice) on labeled batches.",
    "full": "The baseline on every training scan: the fully supervised upper bound.",
    "finetune": "The baseline started from a pre-trained checkpoint (train.init_from).",
    "bim": "Pre-training on unlabeled batches with L_con + L_MI + lambda_CC L_CC.",
    "iic": "Dense IIC pre-training: bim with L_MI alone (alpha, w_con and w_cc set to 0).",
    "imsat": "Dense IMSAT pre-training on unlabeled batches.",
    "contrast_enc": "Global (encoder) contrastive pre-training alone.",
    "contrast_dec": "Local (decoder) contrastive pre-training alone.",
    "contrast_enc_dec": "Global (encoder) and/or local (decoder) contrastive pre-training.",
    "contrast_global": "Encoder + ``g1`` under ``L_g`` with the configured contrasting strategy.",
    "contrast_local": "``d_l`` + ``g2`` under ``L_l`` on a frozen pre-trained encoder.",
    "contrast_joint": "Encoder + ``g1`` under ``L_g`` and ``d_l`` + ``g2`` under ``lambda_l L_l``, one step.",
    "rotation": "4-way rotation classification of the encoder output.",
    "inpainting": "Reconstruct removed regions from their context.",
    "context_restoration": "Restore images whose patches were swapped.",
    "self_training": "Student on labeled + teacher-labeled images.",
    "ideal_pretrain": "Encoder + 1x1-conv head under the dense InfoNCE of known correspondences.",
    "ideal_finetune": "Two decoders on one encoder, each trained on the other's one-hot predictions.",
    "entmin": "Cross-entropy on labeled slices + entropy of the unlabeled predictions.",
    "mean_teacher": "Supervised CE + ramped squared-error consistency with an EMA teacher.",
    "mixup": "Cross-entropy on the labeled batch and on its mixup.",
    "consistency": "Cross-entropy on labeled images plus transformation consistency on unlabeled ones.",
    "uamt": "Cross-entropy plus masked consistency with an MC-dropout EMA teacher.",
    "ict": "Cross-entropy plus the interpolation consistency of unlabeled mixes.",
    "adversarial": "Segmenter (engine's optimiser) against a discriminator (the method's own optimiser).",
    "gmi": "Supervised CE plus global MI, local MI and transformation consistency on unlabeled data.",
    "gmi_pretrain": "GMI's unsupervised terms alone, as pre-training (no labeled batches, w_ce 0).",
}
