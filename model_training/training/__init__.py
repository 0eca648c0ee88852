"""Training loops: teacher pretraining, the teacher-target cache, distillation (and the shared
utilities in `common`)."""
