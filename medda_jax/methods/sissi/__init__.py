"""SISSI: seamless iterative semi-supervised correction of imperfect labels in microscopy
images (Elbatel, Bornberg, Kattel, Almar, Marrocco, Bria; DART 2022), cell detection.

For each pipeline and seed:
  1. Noisy target labels from classical generators (Hough circles, watershed, edges).
  2. Train the detector on mixed batches: half noisy-labelled target, half labelled source.
  3. Start label correction when the detector begins to memorise the noisy labels (ADELE's
     curve fit on the AP50 between its predictions and the noisy labels), or at the
     source-validation-loss minimum ("no ADELE"), or never (the baseline).
  4. From then on, every epoch: pseudo-labels from test-time augmentation (scales x flips,
     boxes mapped back) fused by weighted boxes fusion replace the target labels, and every
     target image is rebuilt as a synthetic-like image (blurred copy with the pseudo-labelled
     cells seamlessly cloned back), so missed cells stop acting as false negatives.
The last model is scored on the target test images with COCO AP / AP50 / AP75 / AR per
reader. Substitution: a CenterNet-style anchor-free detector on ResNet + FPN stands in for
the paper's Faster R-CNN (`detector.py`).

Layout: `paper.py` the algorithm pieces (WBF, TTA, ADELE, synthetic-like images, COCO
metrics), `noisy_labels.py` the weak-label generators, `detector.py` the detector,
`data.py` loaders and demo data, `experiment.py` the driver, `report.py` the table,
`figures.py` the figure.
"""

from medda_jax.methods.sissi.experiment import (RESULTS_FILE, Experiment, run_key,
                                                train_and_evaluate, validate)

__all__ = ["RESULTS_FILE", "Experiment", "run_key", "train_and_evaluate", "validate"]
