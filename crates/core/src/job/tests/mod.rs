mod base_models;
mod given_when_then;
mod matrix;
mod props;
mod restarts;
mod review;
mod upcasting;
mod webhooks;
