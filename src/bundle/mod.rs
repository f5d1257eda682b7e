//! Stage 3: the `.elxb` bundle and `.elxc` coefficient files.
