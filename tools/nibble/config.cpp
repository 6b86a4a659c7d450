// nibble config: print the BitsAndBytesConfig that the given flags or file make, or the error.
#include <iostream>
#include <memory>

#include "commands.h"
#include "config_flags.h"

namespace nibble::cli {

void add_config(CLI::App& app) {
  struct Args {
    QuantFlags q;
    bool diff = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* sub = app.add_subcommand("config", "print the BitsAndBytesConfig that flags or a file make");
  add_quant_flags(sub, a->q, true);
  sub->add_flag("--diff", a->diff, "print only the keys that differ from the defaults (to_diff_dict)");
  sub->callback([a] {
    const BitsAndBytesConfig cfg = build_config(a->q, false);
    std::cout << cfg.to_json_string(a->diff);
  });
}

}  // namespace nibble::cli
