// ./inspect FILE: what a checkpoint holds. For a GGUF file, its metadata (long
// arrays summarised) and a count of tensor types; for safetensors (a file or a
// directory with model.safetensors[.index.json]), every tensor's dtype and shape.
#include <cstdio>
#include <cstring>
#include <map>
#include <string>

#include "model/gguf.h"
#include "runtime/safetensors.h"

using namespace nq;

static const char* kUsage =
    "usage: ./inspect [--tensors] FILE\n"
    "  FILE       a .gguf file, a .safetensors file, or a directory holding\n"
    "             model.safetensors or model.safetensors.index.json + shards\n"
    "  --tensors  GGUF: list every tensor (name, type, logical shape), not just counts\n";

// One metadata value on one line; arrays show their length and first items.
static std::string show(const GGUFValue& v) {
  switch (v.type) {
    case GGUFValueType::STRING: {
      std::string s = v.s.size() > 70 ? v.s.substr(0, 70) + "..." : v.s;
      for (char& ch : s) if (ch == '\n') ch = ' ';
      return "\"" + s + "\"";
    }
    case GGUFValueType::BOOL: return v.b ? "true" : "false";
    case GGUFValueType::F32: case GGUFValueType::F64: return str(v.f);
    case GGUFValueType::I8: case GGUFValueType::I16: case GGUFValueType::I32: case GGUFValueType::I64: return str(v.i);
    case GGUFValueType::ARRAY: {
      std::string s = str("[", v.array.size(), " x ", gguf_value_type_name(v.elem_type), "] ");
      for (size_t i = 0; i < v.array.size() && i < 4; ++i) s += (i ? ", " : "") + show(v.array[i]);
      return s + (v.array.size() > 4 ? ", ..." : "");
    }
    default: return str(v.u);
  }
}

static void inspect_gguf(const std::string& path, bool list_tensors) {
  GGUFFile g = GGUFFile::open(path);
  printf("%s: GGUF v%u, %zu metadata keys, %zu tensors, alignment %llu\n", path.c_str(), g.version(),
         g.keys().size(), g.tensors().size(), (unsigned long long)g.alignment());
  for (const std::string& k : g.keys())
    printf("  %-42s %-6s %s\n", k.c_str(), gguf_value_type_name(g.value(k).type), show(g.value(k)).c_str());
  std::map<std::string, int> by_type;
  for (const GGUFTensorInfo& t : g.tensors()) {
    const char* type = ggml_type_info(uint32_t(t.type))->name;
    ++by_type[type];
    if (list_tensors) printf("  %-36s %-5s %s\n", t.name.c_str(), type, t.shape().str().c_str());
  }
  printf("tensor types:");
  for (const auto& [type, n] : by_type) printf(" %s x %d", type.c_str(), n);
  printf("\n");
}

static void inspect_safetensors(const std::string& path) {
  SafetensorsDir d = SafetensorsDir::open(path);
  printf("%s: %zu tensors in %zu file(s)\n", path.c_str(), d.names().size(), d.files().size());
  for (const std::string& n : d.names()) {
    const SafetensorsFile::Entry& e = d.file_of(n).entry(n);
    printf("  %-50s %-4s %s\n", n.c_str(), safetensors_dtype_name(e.dtype), e.shape.str().c_str());
  }
}

int main(int argc, char** argv) {
  bool list_tensors = false;
  std::string path;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") { fputs(kUsage, stdout); return 0; }
    if (a == "--tensors") { list_tensors = true; continue; }
    if (!a.empty() && a[0] == '-') { fprintf(stderr, "error: unknown flag %s\n%s", a.c_str(), kUsage); return 1; }
    if (!path.empty()) { fprintf(stderr, "error: one FILE only (got %s and %s)\n", path.c_str(), a.c_str()); return 1; }
    path = a;
  }
  if (path.empty()) { fputs(kUsage, stderr); return 1; }
  try {
    bool gguf = path.size() > 5 && path.compare(path.size() - 5, 5, ".gguf") == 0;
    if (gguf) inspect_gguf(path, list_tensors);
    else inspect_safetensors(path);
  } catch (const Error& e) {
    fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
