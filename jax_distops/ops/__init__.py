"""One module per op: primitive, public function, abstract eval, lowering, AD, batching, registration."""
