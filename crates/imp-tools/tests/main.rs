//! imp-tools' tests, one binary: the evaluation harness run end to end on the tiny model
//! ([`eval_run`]), scored on hand-made files ([`eval_score`]) and against published numbers
//! ([`eval_published`]); the quantization quality report ([`quality`]). The synthetic models
//! are tested beside their code.

mod support;

mod eval_published;
mod eval_run;
mod eval_score;
mod quality;
