# Writes OUT, a C file with each shell script of src/cli/shell as a string
# (rs_shell_zsh, rs_shell_bash, rs_shell_fish), for `recsync init SHELL`.
# Run as: cmake -DIN_DIR=... -DOUT=... -P embed.cmake
set(body "/* Generated from src/cli/shell by embed.cmake: do not edit. */\n")
foreach(sh zsh bash fish)
    file(READ ${IN_DIR}/recsync.${sh} hex HEX)
    string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," hex "${hex}")
    string(APPEND body "const char rs_shell_${sh}[] = {${hex}0x00};\n")
endforeach()
file(WRITE ${OUT}.tmp "${body}")
file(RENAME ${OUT}.tmp ${OUT})
