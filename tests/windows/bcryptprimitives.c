/*
 * A stand-in for Windows' bcryptprimitives.dll, for running streamlab.exe under wine only.
 *
 * Why: Rust's std (since 1.78) gets its random numbers from ProcessPrng in bcryptprimitives.dll,
 * which every Windows 10/11 has; wine 8 (Debian 12's) does not ship that DLL, so the .exe stops
 * before main ("bcryptprimitives.dll not found" / ProcessPrng unresolved). This is a limit of
 * wine, not of Windows: a real Windows user never needs this file.
 *
 * What: ProcessPrng(buffer, length) filled by RtlGenRandom (advapi32's SystemFunction036), which
 * wine has. scripts/windows-check compiles it next to the .exe:
 *   x86_64-w64-mingw32-gcc -shared -O2 -o bcryptprimitives.dll bcryptprimitives.c -ladvapi32
 */
#include <windows.h>

/* RtlGenRandom: exported by advapi32 under this name; at most ULONG bytes a call. */
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
