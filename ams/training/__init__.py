"""Offline training of the students' starting weights: w0 distilled from the teacher (`ams-pretrain`) and the
low-latency segmenter's three stages."""
