"""Speed and memory benchmark for fcn-cam (issue 9): one run, every target side by side.

Run from the repository root::

    python -m benchmarks.speed                 # full run (~15 min on 2 cores), writes benchmarks/results/
    python -m benchmarks.speed --quick         # smoke run (~2 min), writes to a temporary directory
    python -m benchmarks.speed --only forward,head

Sections (one module each; results go to ``benchmarks/results/speed.md`` + ``speed.json``):

- ``machine``   CPU model and flags, torch's CPU capability, fp32/bf16 matmul rate
- ``forward``   VGG16 converted forward vs the original torchvision forward (224); share of the
                matmul rate at 448 (fp32, bf16); per-layer times
- ``head``      the head run as GEMMs vs as convolutions, and the original classifier
- ``gradcam``   ``fcn_cam.explain`` (score maps, cell maps) vs torchcam Grad-CAM at 224/448/672
- ``sweep``     100 classes: per-class cost of score maps, cell maps and Grad-CAM
- ``cells``     cell-map cost vs the score-map explain
- ``precision`` ``--precision auto`` vs fp32 vs bf16
- ``padding``   what each padding costs (cover / window / none)
- ``memory``    convert peak vs model size; explain of a 6000×4000 photo (fresh subprocesses)
- ``ray``       Ray Data vs the local CLI (filled in by the Ray work)

Weights are random (no downloads): timings do not depend on them. bf16 on a CPU without bf16
units (AVX2 only) is ~10× slower than fp32, so bf16 rows are few and time-boxed there.
"""
