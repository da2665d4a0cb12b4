"""μ-Bench (Micro-Bench), the microscopy vision-language benchmark of Lozano, Nirschl et al.

``meta``: the 22 source datasets, taxonomy groups and slices (pure Python, cheap to import);
``data``: download of the pinned hub shards, the row reader and image access (imports pyarrow
when used). The tasks are registered by ``biobench.tasks.ubench``. Facts: spec/ubench.md.
"""
