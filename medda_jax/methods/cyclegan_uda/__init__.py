"""CycleGAN unsupervised domain adaptation between mammography sites (seed 002).

  python -m medda_jax.train --config=configs/cyclegan.py:demo --workdir=runs/cyclegan
  python -m medda_jax.train --config=configs/cyclegan.py --workdir=runs/ddsm_ffdm \
      --config.data.dirs.cbis_ddsm=/data/CBIS-DDSM \
      --config.data.domains="('cbis_ddsm','ffdm=/data/our_ffdm')"

A domain given as `name=path` is the user's own (`medda_jax.data.images`: a class-folder
root or a CSV path,label[,patient_id] with two classes); results call it `name`.

For the two domains A and B (spec cyclegan_uda.md (c)):
1. One CycleGAN on the unlabelled training images of both (never their test images), with
   the reference's defaults: ResNet generators G_A: A -> B and G_B: B -> A, 70x70 PatchGAN
   critics, LSGAN, cycle weight 10, identity 0.5, D loss halved, Adam 2e-4 (0.5, 0.999),
   constant then linearly decaying learning rate, 50-image pools per direction
   (`paper.py`; the pools live in the GAN state, `engine.image_pool`).
2. The labelled training set of each domain translated into the other's style.
3. Per direction S -> T, per classifier (AlexNet, ResNet-50), per seed: a baseline trained
   on S's training images, and the UDA model trained on them plus their translations, both
   with S's labels and early stopping on S's validation auROC.
4. Both evaluated on S's test set (in-domain) and T's (cross-domain): auROC, a bootstrap CI
   per run, mean +- 1.96 sd / sqrt(R) over the seeds.

Outputs in the workdir: `results.md` / `results.json` (the seed's table, every run, the
config), `translations_<A>_to_<B>.png` and back, `runs.json` (finished classifier runs; a
rerun skips them), the CycleGAN checkpoints (a killed run resumes mid-GAN with its pools
and RNG), `metrics.jsonl` and TensorBoard logs.

Layout: `paper.py` is the method (CycleGAN's losses and schedule), `experiment.py` runs it
(config, domains, the CycleGAN, translation, classifiers, the driver) and `report.py` makes
its tables.
"""

# The command line, the tests and the benchmarks use the package; its parts are re-exported.
from medda_jax.methods.cyclegan_uda.experiment import (
    BUILTIN_DOMAINS, CLASSIFIERS, CycleGAN, Domain, classifier_net, gan_batches, load_domain,
    steps_per_epoch, train_and_evaluate, validate)
from medda_jax.methods.cyclegan_uda.paper import (cyclegan_losses, initial_critic_state,
                                                  least_squares, lr_schedule)
from medda_jax.methods.cyclegan_uda.report import PAPER, interval, summarise, tables_markdown
