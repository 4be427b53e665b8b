"""F1: the harmonic mean of precision and recall.

A local copy of the Hub's ``evaluate-metric/f1`` (same name, inputs, ``average=`` options and
output key), so that ``evaluate.load("<this directory>")`` works offline. Computed with
scikit-learn's ``f1_score``.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import f1_score

_DESCRIPTION = """
The F1 score is the harmonic mean of precision and recall:
F1 = 2 * (precision * recall) / (precision + recall)
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): ground-truth labels.
    labels (`list` of `int`): labels to include when `average` is not "binary", and their order when
        `average` is None. Defaults to all labels seen in `predictions` and `references`, sorted.
    pos_label (`int`): the positive class when `average` is "binary". Defaults to 1.
    average (`str` or None): "binary" (default; only `pos_label`), "micro" (global counts),
        "macro" (unweighted mean over labels), "weighted" (mean weighted by support),
        "samples" (multilabel only), or None (one score per label).
    sample_weight (`list` of `float`): per-example weights. Defaults to None.

Returns:
    f1 (`float`, or an array of `float` when `average` is None): in [0, 1], higher is better.

Examples:
    >>> f1 = evaluate.load("hftl/metrics/f1")
    >>> f1.compute(references=[0, 1, 0, 1, 0], predictions=[0, 0, 1, 1, 0])
    {'f1': 0.5}
    >>> round(f1.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 2, 1, 0, 0, 1], average="macro")["f1"], 2)
    0.27
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V.
         and Thirion, B. and Grisel, O. and Blondel, M. and Prettenhofer, P.
         and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
         Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        # The "multilabel" config takes one 0/1 vector per example, like the Hub metric.
        if self.config_name == "multilabel":
            features = {
                "predictions": datasets.Sequence(datasets.Value("int32")),
                "references": datasets.Sequence(datasets.Value("int32")),
            }
        else:
            features = {
                "predictions": datasets.Value("int32"),
                "references": datasets.Value("int32"),
            }
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(features),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None):
        score = f1_score(
            references, predictions, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight
        )
        # scikit-learn returns a Python float or a NumPy array depending on its version and on
        # `average`: a single score becomes a float, average=None keeps the per-label array.
        score = np.asarray(score)
        return {"f1": float(score.item()) if score.size == 1 else score}
