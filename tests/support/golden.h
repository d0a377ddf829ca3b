// golden.h: readers for the llama.cpp golden files in tests/reference/golden/ (formats
// are documented in tests/reference/README.md). Header-only, tests only.
#pragma once

#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace golden {

inline std::vector<std::string> split(const std::string &s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  out.push_back(cur);
  return out;
}

inline std::vector<int> ints(const std::string &s) {
  std::vector<int> v;
  std::istringstream is(s);
  int x;
  while (is >> x) v.push_back(x);
  return v;
}

inline std::vector<double> doubles(const std::string &s) {
  std::vector<double> v;
  std::istringstream is(s);
  double x;
  while (is >> x) v.push_back(x);
  return v;
}

inline std::string path(const char *file) { return std::string(AK_GOLDEN_DIR) + "/" + file; }

inline bool exists(const char *file) {
  std::ifstream f(path(file));
  return f.good();
}

struct Greedy {
  std::string name;
  std::vector<int> prompt;
  std::vector<int> continuation;
  std::vector<double> margins;  // reference top-1 minus top-2 logit at each generated token
};

inline std::vector<Greedy> read_greedy(const char *file = "greedy.tsv") {
  std::vector<Greedy> out;
  std::ifstream f(path(file));
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    auto cols = split(line, '\t');
    if (cols.size() < 4) continue;
    out.push_back({cols[0], ints(cols[1]), ints(cols[2]), doubles(cols[3])});
  }
  return out;
}

// name -> pos -> top-5 (id, logit)
using Top = std::vector<std::pair<int, double>>;
inline std::map<std::string, std::map<int, Top>> read_logits_file(const char *file) {
  std::map<std::string, std::map<int, Top>> out;
  std::ifstream f(path(file));
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    auto cols = split(line, '\t');
    if (cols.size() < 3) continue;
    Top top;
    std::istringstream is(cols[2]);
    std::string item;
    while (is >> item) {
      auto c = item.find(':');
      top.push_back({std::stoi(item.substr(0, c)), std::stod(item.substr(c + 1))});
    }
    out[cols[0]][std::stoi(cols[1])] = top;
  }
  return out;
}

inline std::map<std::string, std::map<int, Top>> read_logits() { return read_logits_file("logits.tsv"); }

// name <TAB> space-separated ids
inline std::map<std::string, std::vector<int>> read_prompts(const char *file) {
  std::map<std::string, std::vector<int>> out;
  std::ifstream f(path(file));
  std::string line;
  while (std::getline(f, line)) {
    auto cols = split(line, '\t');
    if (cols.size() >= 2) out[cols[0]] = ints(cols[1]);
  }
  return out;
}

}  // namespace golden
