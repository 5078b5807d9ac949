// score_csv: score a CSV of ids with a pimm_fast package (.pt2), from C++ only.
//
//   score_csv MODEL.pt2 PIMM_FAST_LIBRARY.so IDS.csv [--threads N] [--bench ROUNDS]
//
// --bench ROUNDS: instead of printing probabilities, score the whole CSV as one batch ROUNDS times
// (after 10 warm-up runs) and print the latency p50 / p99 and the throughput on stdout.
//
// IDS.csv: one row per impression, the F id columns in the model's field order (then the K dense
// values when the model has dense features; empty or "nan" = missing). A model with multi-valued (bag)
// fields - the last F_bag fields - takes one cell per bag field holding its ids separated by '|'
// ("3|17|42"; an empty cell is an empty bag, which pools to zeros). A first line that is not numeric
// is a header and skipped. Prints one line "p_<task>,..." then one line of probabilities per row.
// Exit status 0 on success, 1 on any error (with a message on stderr); an id outside its field's range
// is an error, never an out-of-bounds read (checked here against the package's field sizes, and again
// by the embedding kernel).
//
// A package with bag fields takes three tensors (pimm_fast.export.ExportedBagModel): ids int64
// [B, F_single], bag_values int64 [N] (field-major: all rows' bags of the first bag field, then the
// next field's) and bag_offsets int64 [F_bag*B + 1] (bag (k, b) = bag_values[bag_offsets[k*B + b] :
// bag_offsets[k*B + b + 1]]). AOTInductor does not check input sizes and the package reads F_bag*B + 1
// offsets whatever the tensor holds: a caller must pass exactly that many (here they are built from the
// CSV, so they always are). The embedding kernel checks the ids and that the offsets run from 0 to N.
#include <dlfcn.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(text);
  while (std::getline(in, part, sep)) parts.push_back(part);
  if (!text.empty() && text.back() == sep) parts.emplace_back();
  return parts;
}

std::string trim(std::string s) {
  const auto first = s.find_first_not_of(" \t\r");
  const auto last = s.find_last_not_of(" \t\r");
  return first == std::string::npos ? std::string() : s.substr(first, last - first + 1);
}

bool parse_int(const std::string& text, int64_t& out) {
  const std::string s = trim(text);
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (errno != 0 || *end != '\0') return false;
  out = v;
  return true;
}

std::string metadata(const std::unordered_map<std::string, std::string>& meta, const std::string& key,
                     const std::string& path) {
  const auto it = meta.find(key);
  if (it == meta.end()) {
    throw std::runtime_error(path + ": not a pimm_fast package (no '" + key +
                             "' metadata); export one with pimm_fast.export.save or `pimm-fast export`");
  }
  return it->second;
}

struct Batch {
  std::vector<int64_t> ids;                     // [B, F_single] row-major
  std::vector<std::vector<int64_t>> bag_ids;    // per bag field: its rows' ids, row after row
  std::vector<std::vector<int64_t>> bag_sizes;  // per bag field: [B] bag lengths
  std::vector<float> dense;                     // [B, K] row-major
  int64_t rows = 0;
};

// The ids of a bag cell ("3|17|42", "" = empty bag) into out; false when one is not an integer.
bool parse_bag(const std::string& cell, std::vector<int64_t>& out) {
  out.clear();
  if (trim(cell).empty()) return true;
  for (const auto& part : split(cell, '|')) {
    int64_t id = 0;
    if (!parse_int(part, id)) return false;
    out.push_back(id);
  }
  return true;
}

Batch read_csv(const std::string& path, const std::vector<int64_t>& field_dims, int64_t num_bags, int64_t num_dense) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open the CSV file");
  const auto fields = static_cast<int64_t>(field_dims.size());
  const int64_t single = fields - num_bags;
  Batch batch;
  batch.bag_ids.resize(num_bags);
  batch.bag_sizes.resize(num_bags);
  std::vector<int64_t> bag;
  std::string line;
  for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
    if (trim(line).empty()) continue;
    const auto cells = split(line, ',');
    int64_t first = 0;
    if (line_no == 1 && !(single ? parse_int(cells[0], first) : parse_bag(cells[0], bag))) continue;  // a header
    const std::string at = path + ":" + std::to_string(line_no) + ": ";
    if (static_cast<int64_t>(cells.size()) != fields + num_dense) {
      throw std::runtime_error(at + "expected " + std::to_string(single) + " id columns" +
                               (num_bags ? ", " + std::to_string(num_bags) + " bag columns" : "") +
                               (num_dense ? " and " + std::to_string(num_dense) + " dense" : "") + ", got " +
                               std::to_string(cells.size()) + " columns");
    }
    for (int64_t f = 0; f < fields; ++f) {
      if (f < single) {
        int64_t id = 0;
        if (!parse_int(cells[f], id)) {
          throw std::runtime_error(at + "field " + std::to_string(f) + ": not an integer id: '" + cells[f] + "'");
        }
        bag.assign(1, id);
      } else if (!parse_bag(cells[f], bag)) {
        throw std::runtime_error(at + "field " + std::to_string(f) + " (bag): not integer ids separated by '|': '" +
                                 cells[f] + "'");
      }
      for (const int64_t id : bag) {
        if (id < 0 || id >= field_dims[f]) {
          throw std::out_of_range(at + "id " + std::to_string(id) + " is out of range for field " + std::to_string(f) +
                                  (f < single ? "" : " (bag)") + ", which has " + std::to_string(field_dims[f]) +
                                  " values");
        }
      }
      if (f < single) {
        batch.ids.push_back(bag[0]);
      } else {
        auto& values = batch.bag_ids[f - single];
        values.insert(values.end(), bag.begin(), bag.end());
        batch.bag_sizes[f - single].push_back(static_cast<int64_t>(bag.size()));
      }
    }
    for (int64_t k = 0; k < num_dense; ++k) {
      const std::string s = trim(cells[fields + k]);
      batch.dense.push_back(s.empty() || s == "nan" || s == "NaN" ? NAN : std::stof(s));
    }
    ++batch.rows;
  }
  if (batch.rows == 0) throw std::runtime_error(path + ": no rows to score");
  return batch;
}

int run(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt2 PIMM_FAST_LIBRARY.so IDS.csv [--threads N] [--bench ROUNDS]\n";
    return 2;
  }
  const std::string model_path = argv[1], library_path = argv[2], csv_path = argv[3];
  int bench_rounds = 0;
  for (int i = 4; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc || (flag != "--threads" && flag != "--bench")) {
      throw std::invalid_argument("unknown or incomplete option '" + flag + "' (--threads N, --bench ROUNDS)");
    }
    if (flag == "--threads") at::set_num_threads(std::stoi(argv[i + 1]));
    if (flag == "--bench") bench_rounds = std::stoi(argv[i + 1]);
  }
  // pimm_fast's library defines the op schemas (TORCH_LIBRARY) and registers the kernels the package calls.
  if (dlopen(library_path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    throw std::runtime_error("cannot load the pimm_fast library " + library_path + ": " + dlerror());
  }
  torch::inductor::AOTIModelPackageLoader loader(model_path);
  const auto meta = loader.get_metadata();
  std::vector<int64_t> field_dims;
  for (const auto& d : split(metadata(meta, "pimm_fast.field_dims", model_path), ',')) field_dims.push_back(std::stoll(d));
  const auto tasks = split(metadata(meta, "pimm_fast.task_names", model_path), ',');
  const int64_t num_dense = std::stoll(metadata(meta, "pimm_fast.num_dense", model_path));
  // Packages written before bag fields could be exported have no such key: no bags.
  const auto bags_key = meta.find("pimm_fast.num_bag_fields");
  const int64_t num_bags = bags_key == meta.end() ? 0 : std::stoll(bags_key->second);
  if (metadata(meta, "AOTI_DEVICE_KEY", model_path) != "cpu") {
    throw std::runtime_error(model_path + ": this example runs CPU packages; export the model on the CPU");
  }

  Batch batch = read_csv(csv_path, field_dims, num_bags, num_dense);
  const int64_t single = static_cast<int64_t>(field_dims.size()) - num_bags;
  std::vector<at::Tensor> inputs{at::from_blob(batch.ids.data(), {batch.rows, single}, at::kLong).clone()};
  if (num_bags) {  // bag_values and bag_offsets, field-major
    std::vector<int64_t> values, offsets{0};
    for (int64_t k = 0; k < num_bags; ++k) {
      values.insert(values.end(), batch.bag_ids[k].begin(), batch.bag_ids[k].end());
      for (const int64_t n : batch.bag_sizes[k]) offsets.push_back(offsets.back() + n);
    }
    inputs.push_back(at::tensor(values, at::kLong));
    inputs.push_back(at::tensor(offsets, at::kLong));
  }
  if (num_dense) inputs.push_back(at::from_blob(batch.dense.data(), {batch.rows, num_dense}, at::kFloat).clone());
  if (bench_rounds > 0) {
    for (int i = 0; i < 10; ++i) loader.run(inputs);
    std::vector<double> ms;
    for (int i = 0; i < bench_rounds; ++i) {
      const auto start = std::chrono::steady_clock::now();
      loader.run(inputs);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(ms.begin(), ms.end());
    const double p50 = ms[ms.size() / 2], p99 = ms[std::min(ms.size() - 1, ms.size() * 99 / 100)];
    std::printf("batch %lld: p50 %.4f ms, p99 %.4f ms, %.0f rows/s (%d rounds, %d threads)\n",
                static_cast<long long>(batch.rows), p50, p99, batch.rows / (p50 / 1e3), bench_rounds,
                at::get_num_threads());
    return 0;
  }
  const auto outputs = loader.run(inputs);
  const at::Tensor probs = outputs.at(0).contiguous().to(at::kFloat);
  TORCH_CHECK(probs.dim() == 2 && probs.size(0) == batch.rows && probs.size(1) == static_cast<int64_t>(tasks.size()),
              "unexpected output shape ", probs.sizes());

  for (size_t t = 0; t < tasks.size(); ++t) std::printf("%sp_%s", t ? "," : "", tasks[t].c_str());
  std::printf("\n");
  const float* p = probs.data_ptr<float>();
  for (int64_t r = 0; r < batch.rows; ++r) {
    for (int64_t t = 0; t < probs.size(1); ++t) std::printf("%s%.9g", t ? "," : "", p[r * probs.size(1) + t]);
    std::printf("\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "score_csv: error: " << e.what() << "\n";
    return 1;
  }
}
