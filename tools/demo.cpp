// Placeholder replaced by the engine demo.
int main() { return 0; }
