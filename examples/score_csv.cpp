// score_csv: score a CSV of raw values with a pimm_fast package (.pt2), from C++ only.
//
//   score_csv MODEL.pt2 PIMM_FAST_LIBRARY.so DATA.csv [--keep-columns a,b] [--batch ROWS] [--threads N]
//   score_csv MODEL.pt2 PIMM_FAST_LIBRARY.so IDS.csv --ids [--threads N] [--bench ROUNDS]
//
// Raw mode (the default): DATA.csv has a header; its cells are raw values as in the training file
// (strings or integers; RFC 4180 quoting, CRLF line ends tolerated, a UTF-8 BOM skipped). The columns are
// matched by name (any order, extra columns allowed) with the vocabulary stored in the package
// (pimm_fast.export.save(..., vocabulary=...)), read here from the archive without Python:
//   - an "encoded" field: the cell's bytes are looked up by binary search in the field's sorted keys (a
//     cell longer than 64 bytes by its FNV-1a digest); a cell that is not a key (unseen in training,
//     rarer than min_count, empty) gets code 0 and is counted;
//   - an "identity" field: the cell must be a decimal integer 0 <= v < size, else an error naming the
//     line, the column and the value;
//   - a bag field (multi-valued): its tokens separated by '|' (an empty cell is an empty bag);
//   - a dense column: a number; empty, NA, NaN, null, None, ?, -, N/A (any case) and +-inf are missing
//     (NaN, which the model imputes and flags as in training).
// Prints CSV on stdout: the key columns (by default every column that is neither a feature nor a dense
// column of the vocabulary, labels included; --keep-columns a,b chooses them, "" for none), then p_<task>, one row per
// input row in the input's order; the count of unseen values per field goes to stderr. The rows are
// read, encoded and scored --batch rows at a time (default 65536).
//
// --ids mode (pre-encoded ids, no vocabulary needed): one row per impression, the F id columns in the
// model's field order (then the K dense values when the model has dense features; empty or "nan" =
// missing). A bag field's cell holds its ids separated by '|'. A first line that is not numeric is a header
// and skipped. Prints one line "p_<task>,..." then one line of probabilities per row.
// --bench ROUNDS: instead of printing probabilities, score the whole CSV as one batch ROUNDS times (after 10
// warm-up runs) and print the latency p50 / p99 and the throughput on stdout.
//
// Exit status 0 on success, 1 on any error (a message on stderr naming the file, line, column, value):
// a missing column, a bad identity id or dense value, a row with another number of cells than the header,
// a package without a vocabulary in raw mode. An id outside its field's range is an error, never an
// out-of-bounds read (checked here against the package's field sizes, and again by the embedding kernel).
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
#include <caffe2/serialize/inline_container.h>
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
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
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

// Python's bytes.strip(): ASCII whitespace at both ends.
std::string trim(const std::string& s) {
  const char* ws = " \t\r\n\v\f";
  const auto first = s.find_first_not_of(ws);
  const auto last = s.find_last_not_of(ws);
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

// A value quoted for an error message, cut at 60 bytes.
std::string shown(const std::string& value) {
  std::string out = "'";
  for (const char c : value.substr(0, 60)) {
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\0') out += "\\0";
    else out += c;
  }
  return out + (value.size() > 60 ? "...'" : "'");
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

// ------------------------------------------------------------------------------------------------
// The package: the AOTInductor runner and pimm_fast's metadata
// ------------------------------------------------------------------------------------------------
struct Package {
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
  std::unordered_map<std::string, std::string> meta;
  std::vector<int64_t> field_dims;
  std::vector<std::string> tasks;
  int64_t num_dense = 0, num_bags = 0, single = 0;
};

Package open_package(const std::string& path) {
  Package p;
  p.loader = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path);
  p.meta = p.loader->get_metadata();
  for (const auto& d : split(metadata(p.meta, "pimm_fast.field_dims", path), ',')) {
    p.field_dims.push_back(std::stoll(d));
  }
  p.tasks = split(metadata(p.meta, "pimm_fast.task_names", path), ',');
  p.num_dense = std::stoll(metadata(p.meta, "pimm_fast.num_dense", path));
  // Packages written before bag fields could be exported have no such key: no bags.
  const auto bags_key = p.meta.find("pimm_fast.num_bag_fields");
  p.num_bags = bags_key == p.meta.end() ? 0 : std::stoll(bags_key->second);
  p.single = static_cast<int64_t>(p.field_dims.size()) - p.num_bags;
  if (metadata(p.meta, "AOTI_DEVICE_KEY", path) != "cpu") {
    throw std::runtime_error(path + ": this example runs CPU packages; export the model on the CPU");
  }
  return p;
}

struct Batch {
  std::vector<int64_t> ids;                     // [B, F_single] row-major
  std::vector<std::vector<int64_t>> bag_ids;    // per bag field: its rows' ids, row after row
  std::vector<std::vector<int64_t>> bag_sizes;  // per bag field: [B] bag lengths
  std::vector<float> dense;                     // [B, K] row-major
  int64_t rows = 0;

  explicit Batch(int64_t num_bags) : bag_ids(num_bags), bag_sizes(num_bags) {}
  void clear() {
    ids.clear();
    dense.clear();
    for (auto& v : bag_ids) v.clear();
    for (auto& v : bag_sizes) v.clear();
    rows = 0;
  }
};

std::vector<at::Tensor> inputs_of(const Package& p, Batch& batch) {
  std::vector<at::Tensor> inputs{at::from_blob(batch.ids.data(), {batch.rows, p.single}, at::kLong).clone()};
  if (p.num_bags) {  // bag_values and bag_offsets, field-major
    std::vector<int64_t> values, offsets{0};
    for (int64_t k = 0; k < p.num_bags; ++k) {
      values.insert(values.end(), batch.bag_ids[k].begin(), batch.bag_ids[k].end());
      for (const int64_t n : batch.bag_sizes[k]) offsets.push_back(offsets.back() + n);
    }
    inputs.push_back(at::tensor(values, at::kLong));
    inputs.push_back(at::tensor(offsets, at::kLong));
  }
  if (p.num_dense) inputs.push_back(at::from_blob(batch.dense.data(), {batch.rows, p.num_dense}, at::kFloat).clone());
  return inputs;
}

at::Tensor score(Package& p, Batch& batch) {
  const auto outputs = p.loader->run(inputs_of(p, batch));
  at::Tensor probs = outputs.at(0).contiguous().to(at::kFloat);
  TORCH_CHECK(probs.dim() == 2 && probs.size(0) == batch.rows && probs.size(1) == static_cast<int64_t>(p.tasks.size()),
              "unexpected output shape ", probs.sizes());
  return probs;
}

void print_probs(const at::Tensor& probs, int64_t r, bool leading_comma) {
  const float* data = probs.data_ptr<float>();
  for (int64_t t = 0; t < probs.size(1); ++t) {
    std::printf("%s%.9g", (t || leading_comma) ? "," : "", data[r * probs.size(1) + t]);
  }
  std::printf("\n");
}

int bench(Package& p, Batch& batch, int rounds) {
  const auto inputs = inputs_of(p, batch);
  for (int i = 0; i < 10; ++i) p.loader->run(inputs);
  std::vector<double> ms;
  for (int i = 0; i < rounds; ++i) {
    const auto start = std::chrono::steady_clock::now();
    p.loader->run(inputs);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(ms.begin(), ms.end());
  const double p50 = ms[ms.size() / 2], p99 = ms[std::min(ms.size() - 1, ms.size() * 99 / 100)];
  std::printf("batch %lld: p50 %.4f ms, p99 %.4f ms, %.0f rows/s (%d rounds, %d threads)\n",
              static_cast<long long>(batch.rows), p50, p99, batch.rows / (p50 / 1e3), rounds, at::get_num_threads());
  return 0;
}

// ------------------------------------------------------------------------------------------------
// --ids: pre-encoded ids, no header needed
// ------------------------------------------------------------------------------------------------
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

Batch read_ids_csv(const std::string& path, const Package& p) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open the CSV file");
  const auto fields = static_cast<int64_t>(p.field_dims.size());
  const int64_t single = p.single, num_bags = p.num_bags, num_dense = p.num_dense;
  Batch batch(num_bags);
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
        if (id < 0 || id >= p.field_dims[f]) {
          throw std::out_of_range(at + "id " + std::to_string(id) + " is out of range for field " + std::to_string(f) +
                                  (f < single ? "" : " (bag)") + ", which has " + std::to_string(p.field_dims[f]) +
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

int run_ids(Package& p, const std::string& csv_path, int bench_rounds) {
  Batch batch = read_ids_csv(csv_path, p);
  if (bench_rounds > 0) return bench(p, batch, bench_rounds);
  const at::Tensor probs = score(p, batch);
  for (size_t t = 0; t < p.tasks.size(); ++t) std::printf("%sp_%s", t ? "," : "", p.tasks[t].c_str());
  std::printf("\n");
  for (int64_t r = 0; r < batch.rows; ++r) print_probs(probs, r, false);
  return 0;
}

// ------------------------------------------------------------------------------------------------
// The vocabulary (text format of docs/serving.md, "pimm_fast.vocabulary/1"), read from the package
// ------------------------------------------------------------------------------------------------
struct FieldVocab {
  std::string name, kind;
  int64_t size = 0;
  bool bag = false;
  std::vector<std::string> keys;  // encoded: sorted by bytes, key i has code i + 1
};

struct Vocabulary {
  std::vector<std::string> tasks, labels, dense;
  std::vector<FieldVocab> fields;
};

std::string unescape(const std::string& text, const std::string& where) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\\') {
      out += text[i];
      continue;
    }
    const char c = i + 1 < text.size() ? text[++i] : '?';
    switch (c) {
      case '\\': out += '\\'; break;
      case 't': out += '\t'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case '0': out += '\0'; break;
      default: throw std::runtime_error(where + ": bad escape in " + shown(text));
    }
  }
  return out;
}

// Fields of one line split at TAB, unescaped; the first is the line's tag.
std::vector<std::string> tabbed(const std::string& line, const std::string& where) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t i = 0; i <= line.size(); ++i) {
    if (i == line.size() || line[i] == '\t') {
      parts.push_back(unescape(line.substr(start, i - start), where));
      start = i + 1;
    }
  }
  return parts;
}

Vocabulary parse_vocabulary(const std::string& text, const std::string& where) {
  Vocabulary v;
  size_t pos = 0, line_no = 0;
  auto next = [&](std::string& line) {
    if (pos >= text.size()) return false;
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    return true;
  };
  auto fail = [&](const std::string& what) {
    return std::runtime_error(where + ", line " + std::to_string(line_no) + ": " + what);
  };
  auto tagged = [&](const std::string& tag) {
    std::string line;
    if (!next(line)) throw fail("ends before the '" + tag + "' line");
    auto parts = tabbed(line, where);
    if (parts[0] != tag) throw fail("expected a '" + tag + "' line, got " + shown(line));
    parts.erase(parts.begin());
    return parts;
  };
  std::string line;
  if (!next(line) || line != "pimm_fast.vocabulary/1") throw fail("not a pimm_fast vocabulary (version 1)");
  tagged("source");
  v.tasks = tagged("tasks");
  v.labels = tagged("labels");
  v.dense = tagged("dense");
  const auto count = tagged("fields");
  int64_t num_fields = 0;
  if (count.size() != 1 || !parse_int(count[0], num_fields) || num_fields < 0) throw fail("bad field count");
  for (int64_t f = 0; f < num_fields; ++f) {
    const auto parts = tagged("field");  // name, kind, size, min_count, single|bag, key lines
    int64_t size = 0, min_count = 0, num_keys = 0;
    if (parts.size() != 6 || !parse_int(parts[2], size) || !parse_int(parts[3], min_count) ||
        !parse_int(parts[5], num_keys) || (parts[1] != "encoded" && parts[1] != "identity") ||
        (parts[4] != "single" && parts[4] != "bag") || num_keys < 0) {
      throw fail("bad field line");
    }
    FieldVocab field{parts[0], parts[1], size, parts[4] == "bag", {}};
    field.keys.reserve(num_keys);
    for (int64_t k = 0; k < num_keys; ++k) {
      if (!next(line)) throw fail("ends inside the keys of field '" + field.name + "'");
      field.keys.push_back(unescape(line, where));
      if (k && !(field.keys[k - 1] < field.keys[k])) throw fail("keys of field '" + field.name + "' not increasing");
    }
    if (field.kind == "encoded" ? size != num_keys + 1 : num_keys != 0) {
      throw fail("field '" + field.name + "': size " + std::to_string(size) + " disagrees with " +
                 std::to_string(num_keys) + " keys");
    }
    v.fields.push_back(std::move(field));
  }
  if (!next(line) || line != "end") throw fail("missing 'end'");
  return v;
}

Vocabulary read_vocabulary(const Package& p, const std::string& path) {
  const auto record = p.meta.find("pimm_fast.vocabulary");
  if (record == p.meta.end()) {
    throw std::runtime_error(path + ": the package has no vocabulary (it was exported without one, or by an older "
                             "pimm_fast), so raw values cannot be encoded; export it with its vocabulary "
                             "(`pimm-fast export`, or pimm_fast.export.save(..., vocabulary=...)), or pass "
                             "pre-encoded ids with --ids");
  }
  caffe2::serialize::PyTorchStreamReader reader(path);
  if (!reader.hasRecord(record->second)) throw std::runtime_error(path + ": no archive member " + record->second);
  auto [data, size] = reader.getRecord(record->second);
  const std::string text(static_cast<const char*>(data.get()), size);
  Vocabulary v = parse_vocabulary(text, path + ":" + record->second);
  // The package was checked against its vocabulary at export; checked again so a bad archive cannot
  // produce out-of-range codes.
  bool same = v.fields.size() == p.field_dims.size() && static_cast<int64_t>(v.dense.size()) == p.num_dense;
  for (size_t f = 0; same && f < v.fields.size(); ++f) {
    same = v.fields[f].size == p.field_dims[f] && v.fields[f].bag == (static_cast<int64_t>(f) >= p.single);
  }
  if (!same) throw std::runtime_error(path + ": the vocabulary does not match the model's fields");
  return v;
}

std::string hex64(uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

uint64_t fnv1a64(const std::string& token, uint64_t h) {
  for (const unsigned char c : token) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

// The token looked up for a cell: the cell, or its digest when longer than 64 bytes.
std::string canonical(const std::string& cell) {
  if (cell.size() <= 64) return cell;
  return std::string(1, '\0') + hex64(fnv1a64(cell, 0xcbf29ce484222325ULL)) +
         hex64(fnv1a64(cell, 0x6c62272e07bb0142ULL));
}

// ------------------------------------------------------------------------------------------------
// CSV (RFC 4180): quoted cells may hold commas, quotes ("") and line breaks; CRLF or LF line ends
// ------------------------------------------------------------------------------------------------
class CsvReader {
 public:
  explicit CsvReader(const std::string& path) : path_(path), in_(path, std::ios::binary) {
    if (!in_) throw std::runtime_error(path + ": cannot open the CSV file");
    if (in_.peek() == 0xEF) {  // a UTF-8 BOM
      char bom[3];
      in_.read(bom, 3);
      if (std::string(bom, 3) != "\xEF\xBB\xBF") in_.seekg(0);
    }
  }

  // The next record into cells; false at the end of the file. line() is where it started.
  bool next(std::vector<std::string>& cells) {
    cells.clear();
    int c = in_.get();
    if (c == EOF) return false;
    line_ = next_line_;
    std::string cell;
    bool quoted = false, was_quoted = false;
    for (;; c = in_.get()) {
      if (quoted) {
        if (c == EOF) throw std::runtime_error(where() + "a quoted cell is not closed before the end of the file");
        if (c == '"') {
          if (in_.peek() == '"') {
            in_.get();
            cell += '"';
          } else {
            quoted = false;
          }
        } else {
          if (c == '\n') ++next_line_;
          cell += static_cast<char>(c);
        }
        continue;
      }
      if (c == '"' && cell.empty() && !was_quoted) {
        quoted = was_quoted = true;
      } else if (c == ',') {
        cells.push_back(std::move(cell));
        cell.clear();
        was_quoted = false;
      } else if (c == '\n' || c == EOF || (c == '\r' && (in_.peek() == '\n' || in_.peek() == EOF))) {
        if (c == '\r') in_.get();
        if (c != EOF) ++next_line_;
        cells.push_back(std::move(cell));
        return true;
      } else if (was_quoted) {
        throw std::runtime_error(where() + "text after a closing quote");
      } else {
        cell += static_cast<char>(c);
      }
    }
  }

  int64_t line() const { return line_; }
  std::string where() const { return path_ + ":" + std::to_string(line_) + ": "; }

 private:
  std::string path_;
  std::ifstream in_;
  int64_t line_ = 0, next_line_ = 1;
};

// A cell written back as CSV, quoted when it holds a comma, a quote or a line break.
std::string csv_cell(const std::string& cell) {
  if (cell.find_first_of(",\"\r\n") == std::string::npos) return cell;
  std::string out = "\"";
  for (const char c : cell) out += (c == '"') ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

const std::set<std::string> kMissing = {"", "na", "nan", "null", "none", "?", "-", "n/a", "#n/a"};

// A dense cell as the training reader parses it: missing words and +-inf are NaN.
bool parse_dense(const std::string& cell, float& out) {
  std::string s = trim(cell);
  std::string lower = s;
  for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (kMissing.count(lower)) {
    out = NAN;
    return true;
  }
  if (lower.find('x') != std::string::npos) return false;  // strtod reads hex floats, Python does not
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || *end != '\0') return false;
  out = std::isfinite(v) ? static_cast<float>(v) : NAN;
  return true;
}

struct RawOptions {
  bool keep_given = false;
  std::vector<std::string> keep;
  int64_t batch_rows = 65536;
  int bench_rounds = 0;
};

// Files that are not CSV text, refused by what they are (as the Python reader does): compressed, archived or
// Parquet data under a CSV name, or a first line holding a NUL byte (UTF-16 text, binary data).
void check_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open the file");
  std::string line;
  std::getline(in, line);
  const std::pair<std::string, const char*> kinds[] = {
      {std::string("\x1f\x8b", 2), "gzip-compressed: decompress it first (gunzip -k FILE)"},
      {"BZh", "bzip2-compressed: decompress it first (bunzip2 -k FILE)"},
      {std::string("\xfd" "7zXZ\0", 6), "xz-compressed: decompress it first (unxz -k FILE)"},
      {std::string("\x28\xb5\x2f\xfd", 4), "zstd-compressed: decompress it first (unzstd FILE)"},
      {std::string("PK\x03\x04", 4), "a zip archive: extract the CSV from it first"},
      {"PAR1", "a Parquet file: score it from Python (pimm-fast predict --model)"}};
  for (const auto& [magic, what] : kinds) {
    if (line.compare(0, magic.size(), magic) == 0) throw std::runtime_error(path + " is " + what + "; this reads CSV text");
  }
  if (line.find('\0') != std::string::npos) {
    throw std::runtime_error(path + ":1: holds a NUL byte: not a CSV text file (binary data, or UTF-16 text: save it "
                             "as UTF-8)");
  }
}

int run_raw(Package& p, const std::string& model_path, const std::string& csv_path, const RawOptions& opt) {
  const Vocabulary vocab = read_vocabulary(p, model_path);
  check_text_file(csv_path);
  CsvReader csv(csv_path);
  std::vector<std::string> header, cells;
  if (!csv.next(header)) throw std::runtime_error(csv_path + ": the file is empty (a header line is needed)");
  std::map<std::string, size_t> column;
  for (size_t i = 0; i < header.size(); ++i) {
    header[i] = trim(header[i]);
    if (!column.emplace(header[i], i).second) {
      throw std::runtime_error(csv_path + ":1: column '" + header[i] + "' appears twice in the header");
    }
  }
  std::vector<std::string> needed;
  for (const auto& f : vocab.fields) needed.push_back(f.name);
  needed.insert(needed.end(), vocab.dense.begin(), vocab.dense.end());
  std::string missing;
  for (const auto& name : needed) {
    if (!column.count(name)) missing += (missing.empty() ? "'" : ", '") + name + "'";
  }
  if (!missing.empty()) {
    std::string have;
    for (const auto& h : header) have += (have.empty() ? "'" : ", '") + h + "'";
    throw std::runtime_error(csv_path + ": missing column(s) " + missing + " that the model needs (the header has " +
                             have + ")");
  }
  std::vector<size_t> keys;
  if (opt.keep_given) {
    for (const auto& name : opt.keep) {
      if (!column.count(name)) {
        throw std::runtime_error(csv_path + ": --keep-columns: no column '" + name + "' in the header");
      }
      keys.push_back(column[name]);
    }
  } else {
    std::set<std::string> used(needed.begin(), needed.end());  // label columns come back, to check scores
    for (size_t i = 0; i < header.size(); ++i) {
      if (!used.count(header[i])) keys.push_back(i);
    }
  }
  std::vector<size_t> field_col, dense_col;
  for (const auto& f : vocab.fields) field_col.push_back(column[f.name]);
  for (const auto& d : vocab.dense) dense_col.push_back(column[d]);

  const int64_t num_fields = static_cast<int64_t>(vocab.fields.size());
  std::vector<int64_t> unseen(num_fields, 0);
  Batch batch(p.num_bags);
  std::vector<std::vector<std::string>> key_cells;  // the batch's key columns, printed with its scores
  bool printed_header = false;
  auto flush = [&]() {
    if (!printed_header) {
      for (size_t k = 0; k < keys.size(); ++k) std::printf("%s%s", k ? "," : "", csv_cell(header[keys[k]]).c_str());
      for (size_t t = 0; t < p.tasks.size(); ++t) {
        std::printf("%s%s", (t || !keys.empty()) ? "," : "", csv_cell("p_" + p.tasks[t]).c_str());
      }
      std::printf("\n");
      printed_header = true;
    }
    if (batch.rows == 0) return;
    const at::Tensor probs = score(p, batch);
    for (int64_t r = 0; r < batch.rows; ++r) {
      for (size_t k = 0; k < keys.size(); ++k) std::printf("%s%s", k ? "," : "", csv_cell(key_cells[r][k]).c_str());
      print_probs(probs, r, !keys.empty());
    }
    batch.clear();
    key_cells.clear();
  };

  auto code_of = [&](int64_t f, const std::string& token, const std::string& raw) -> int64_t {
    const FieldVocab& field = vocab.fields[f];
    if (field.kind == "identity") {
      int64_t id = -1;
      const bool digits = !token.empty() && token.find_first_not_of("0123456789") == std::string::npos;
      if (!digits || !parse_int(token, id) || id >= field.size) {
        throw std::runtime_error(csv.where() + "column '" + field.name + "' = " + shown(raw) +
                                 " is not an id of this field (a decimal integer in [0, " + std::to_string(field.size) +
                                 "))");
      }
      return id;
    }
    const std::string key = canonical(token);
    const auto it = std::lower_bound(field.keys.begin(), field.keys.end(), key);
    if (it == field.keys.end() || *it != key) {
      ++unseen[f];
      return 0;
    }
    return static_cast<int64_t>(it - field.keys.begin()) + 1;
  };

  int64_t total = 0;
  while (csv.next(cells)) {
    if (cells.size() == 1 && cells[0].empty() && header.size() > 1) continue;  // a blank line
    if (cells.size() != header.size()) {
      throw std::runtime_error(csv.where() + "expected " + std::to_string(header.size()) +
                               " cells (as the header), got " + std::to_string(cells.size()));
    }
    for (int64_t f = 0; f < num_fields; ++f) {
      const std::string& cell = cells[field_col[f]];
      if (f < p.single) {
        batch.ids.push_back(code_of(f, cell, cell));
        continue;
      }
      auto& values = batch.bag_ids[f - p.single];
      int64_t n = 0;
      if (!cell.empty()) {
        for (const auto& token : split(cell, '|')) {
          values.push_back(code_of(f, token, cell));
          ++n;
        }
      }
      batch.bag_sizes[f - p.single].push_back(n);
    }
    for (size_t k = 0; k < dense_col.size(); ++k) {
      float v = 0;
      if (!parse_dense(cells[dense_col[k]], v)) {
        throw std::runtime_error(csv.where() + "dense column '" + vocab.dense[k] + "' = " + shown(cells[dense_col[k]]) +
                                 " is not a number");
      }
      batch.dense.push_back(v);
    }
    std::vector<std::string> kept;
    for (const size_t k : keys) kept.push_back(cells[k]);
    key_cells.push_back(std::move(kept));
    ++batch.rows;
    ++total;
    if (opt.bench_rounds == 0 && batch.rows >= opt.batch_rows) flush();
  }
  if (total == 0) throw std::runtime_error(csv_path + ": no rows to score");
  if (opt.bench_rounds > 0) return bench(p, batch, opt.bench_rounds);
  flush();
  std::fflush(stdout);
  std::string report;
  for (int64_t f = 0; f < num_fields; ++f) {
    if (vocab.fields[f].kind == "encoded") {
      report += (report.empty() ? "" : ", ") + vocab.fields[f].name + " " + std::to_string(unseen[f]);
    }
  }
  std::cerr << "score_csv: " << total << " rows; unseen values (code 0) per field: "
            << (report.empty() ? "none" : report) << "\n";
  return 0;
}

int run(int argc, char** argv) {
  const char* usage = " MODEL.pt2 PIMM_FAST_LIBRARY.so DATA.csv [--keep-columns a,b] [--batch ROWS] [--ids] "
                      "[--threads N] [--bench ROUNDS]\n";
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << usage;
    return 2;
  }
  const std::string model_path = argv[1], library_path = argv[2], csv_path = argv[3];
  bool ids_mode = false;
  RawOptions opt;
  for (int i = 4; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--ids") {
      ids_mode = true;
      continue;
    }
    if (i + 1 >= argc || (flag != "--threads" && flag != "--bench" && flag != "--keep-columns" && flag != "--batch")) {
      throw std::invalid_argument("unknown or incomplete option '" + flag + "'; usage: score_csv" + usage);
    }
    const std::string value = argv[++i];
    if (flag == "--keep-columns") {
      opt.keep_given = true;
      opt.keep = value.empty() ? std::vector<std::string>{} : split(value, ',');
      continue;
    }
    int64_t n = 0;
    if (!parse_int(value, n) || n < 1) {
      throw std::invalid_argument(flag + " needs a positive integer, got '" + value + "'");
    }
    if (flag == "--threads") at::set_num_threads(static_cast<int>(n));
    if (flag == "--bench") opt.bench_rounds = static_cast<int>(n);
    if (flag == "--batch") opt.batch_rows = n;
  }
  // pimm_fast's library defines the op schemas (TORCH_LIBRARY) and registers the kernels the package calls.
  if (dlopen(library_path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    throw std::runtime_error("cannot load the pimm_fast library " + library_path + ": " + dlerror());
  }
  Package package = open_package(model_path);
  if (ids_mode) return run_ids(package, csv_path, opt.bench_rounds);
  return run_raw(package, model_path, csv_path, opt);
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
