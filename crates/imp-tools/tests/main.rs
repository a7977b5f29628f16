//! imp-tools' tests, one binary: the evaluation harness run end to end on the tiny model
//! ([`eval_run`]), scored on hand-made files ([`eval_score`]) and against published numbers
//! ([`eval_published`]).

mod support;

mod eval_published;
mod eval_run;
mod eval_score;
